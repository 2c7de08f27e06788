"""Evaluation metrics for PASTA: segmentation, classification, survival and report text.

Every function takes numpy arrays (or anything ``np.asarray`` accepts) and returns plain Python
floats, so results can be logged, serialised to JSON or returned by the Hugging Face ``evaluate``
modules in ``training/metrics/`` (thin wrappers over this module).

Surface metrics (:func:`hausdorff95_mm`, :func:`surface_dice`) delegate to MONAI; MONAI and torch
are imported inside those functions only. The model files never import this module.

Conventions shared by all functions:

* Masks: any nonzero voxel is foreground; prediction and reference must have the same shape.
* Spacing: voxel size in mm along each array axis, in the arrays' own axis order.
* A value that is undefined for the input (e.g. ROC AUC with a single class present) is ``nan``,
  never an exception; malformed input (length or shape mismatch, wrong label values) raises
  :class:`ValueError` naming the problem.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .report import CATEGORICAL_ATTRIBUTES

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "accuracy",
    "attribute_accuracy",
    "concordance_index",
    "dice_score",
    "hausdorff95_mm",
    "roc_auc",
    "segmentation_metrics",
    "surface_dice",
    "text_overlap",
]


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------


def _mask_pair(prediction: ArrayLike, reference: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean arrays of one shape (any nonzero value is foreground)."""
    pred = np.asarray(prediction)
    ref = np.asarray(reference)
    if pred.shape != ref.shape:
        raise ValueError(
            f"shape mismatch: prediction mask has shape {pred.shape}, reference mask has shape {ref.shape}"
        )
    return pred != 0, ref != 0


def _spacing(spacing_mm: Sequence[float], ndim: int) -> list[float]:
    """Validated voxel spacing: one positive finite length (mm) per array axis."""
    spacing = [float(s) for s in np.atleast_1d(np.asarray(spacing_mm, dtype=float))]
    if len(spacing) != ndim:
        raise ValueError(f"spacing_mm has {len(spacing)} value(s) {spacing}, the masks have {ndim} axes")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be positive finite lengths in mm, got {spacing}")
    return spacing


def _surface_inputs(
    prediction: ArrayLike, reference: ArrayLike, spacing_mm: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    pred, ref = _mask_pair(prediction, reference)
    if pred.ndim not in (2, 3):
        raise ValueError(f"surface metrics need 2D or 3D masks, got {pred.ndim}D of shape {pred.shape}")
    return pred, ref, _spacing(spacing_mm, pred.ndim)


def _batched(mask: np.ndarray) -> torch.Tensor:
    """A mask in MONAI's ``[batch, channel, *spatial]`` layout (float 0/1)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)[None, None])


@contextmanager
def _monai_internal_warnings_silenced() -> Iterator[None]:
    """Silence the deprecation warning MONAI's surface metrics raise from their own internal call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        yield


def dice_score(prediction: ArrayLike, reference: ArrayLike) -> float:
    """Dice similarity coefficient ``2 |P ∩ R| / (|P| + |R|)`` of two binary masks.

    Args:
        prediction: predicted mask, any shape; nonzero voxels are foreground.
        reference: reference mask of the same shape.

    Returns:
        The Dice score in [0, 1]: 1.0 when both masks are empty (nothing to find, nothing found),
        0.0 when exactly one is empty.

    Raises:
        ValueError: when the two masks differ in shape.
    """
    pred, ref = _mask_pair(prediction, reference)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def hausdorff95_mm(prediction: ArrayLike, reference: ArrayLike, spacing_mm: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance (HD95) in mm, computed by MONAI.

    What is measured (``monai.metrics.compute_hausdorff_distance`` with ``percentile=95``):
    each mask is reduced to its *edge voxels* — the foreground voxels removed by one binary
    erosion (6-connected structuring element in 3D), so the surface is the inner boundary
    layer of the mask, and the image border counts as background. For every edge voxel of the
    prediction the Euclidean distance (voxel centre to voxel centre, scaled by ``spacing_mm``)
    to the nearest reference edge voxel is taken, and vice versa. The 95th percentile (linear
    interpolation) of each of the two directed distance sets is computed, and the larger one is
    returned. Note this is the maximum of two directed percentiles, not the percentile of the
    pooled distances.

    Args:
        prediction: predicted mask, 2D or 3D; nonzero voxels are foreground.
        reference: reference mask of the same shape.
        spacing_mm: voxel size in mm along each array axis.

    Returns:
        HD95 in mm; ``nan`` when either mask is empty (the distance is undefined).

    Raises:
        ValueError: on a shape mismatch, masks that are not 2D/3D, or a bad spacing.
    """
    pred, ref, spacing = _surface_inputs(prediction, reference, spacing_mm)
    if not pred.any() or not ref.any():
        return float("nan")
    from monai.metrics import compute_hausdorff_distance

    with _monai_internal_warnings_silenced():
        distance = compute_hausdorff_distance(
            _batched(pred), _batched(ref), include_background=True, percentile=95, spacing=spacing
        )
    return float(distance[0, 0])


def surface_dice(
    prediction: ArrayLike, reference: ArrayLike, spacing_mm: Sequence[float], tolerance_mm: float = 2.0
) -> float:
    """Normalized surface Dice (NSD) at a tolerance in mm, computed by MONAI.

    ``monai.metrics.compute_surface_dice`` (``class_thresholds=[tolerance_mm]``, ``spacing``)
    uses the same edge voxels and distances as :func:`hausdorff95_mm` and returns the fraction
    of all edge voxels of both masks whose distance to the other mask's edge is at most
    ``tolerance_mm``.

    Empty masks follow MONAI's convention: ``nan`` when both masks are empty (no boundary to
    score), 0.0 when exactly one is empty (a missed or spurious structure scores nothing).

    Args:
        prediction: predicted mask, 2D or 3D; nonzero voxels are foreground.
        reference: reference mask of the same shape.
        spacing_mm: voxel size in mm along each array axis.
        tolerance_mm: accepted boundary deviation in mm (non-negative).

    Returns:
        NSD in [0, 1], or ``nan`` as above.

    Raises:
        ValueError: on a shape mismatch, masks that are not 2D/3D, a bad spacing or tolerance.
    """
    pred, ref, spacing = _surface_inputs(prediction, reference, spacing_mm)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a non-negative finite length in mm, got {tolerance_mm}")
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return float("nan")
    if not has_pred or not has_ref:
        return 0.0
    from monai.metrics import compute_surface_dice

    with _monai_internal_warnings_silenced():
        nsd = compute_surface_dice(
            _batched(pred),
            _batched(ref),
            class_thresholds=[float(tolerance_mm)],
            include_background=True,
            spacing=spacing,
        )
    return float(nsd[0, 0])


def segmentation_metrics(
    prediction_labels: ArrayLike,
    reference_labels: ArrayLike,
    spacing_mm: Sequence[float],
    class_names: Mapping[int, str],
    tolerance_mm: float = 2.0,
) -> dict[str, dict[str, float]]:
    """Dice, HD95 and surface Dice per class of two label volumes.

    Args:
        prediction_labels: predicted label volume (integer class ids, 0 = background).
        reference_labels: reference label volume of the same shape.
        spacing_mm: voxel size in mm along each array axis.
        class_names: class id -> name of the classes to score; id 0 (background) is skipped.
        tolerance_mm: tolerance of :func:`surface_dice`.

    Returns:
        ``{class_name: {"dice", "hd95_mm", "surface_dice"}}`` for every named class present in
        the prediction or the reference; classes absent from both are left out. Label values
        without a name in ``class_names`` are not scored.

    Raises:
        ValueError: when the volumes differ in shape, or on a bad spacing or tolerance.
    """
    pred = np.asarray(prediction_labels)
    ref = np.asarray(reference_labels)
    if pred.shape != ref.shape:
        raise ValueError(
            f"shape mismatch: prediction labels have shape {pred.shape}, reference labels have shape {ref.shape}"
        )
    names = {int(class_id): str(name) for class_id, name in class_names.items()}
    results: dict[str, dict[str, float]] = {}
    for class_id in sorted(names):
        if class_id == 0:
            continue
        pred_c, ref_c = pred == class_id, ref == class_id
        if not pred_c.any() and not ref_c.any():
            logger.debug("class %d (%s) absent from prediction and reference: skipped", class_id, names[class_id])
            continue
        results[names[class_id]] = {
            "dice": dice_score(pred_c, ref_c),
            "hd95_mm": hausdorff95_mm(pred_c, ref_c, spacing_mm),
            "surface_dice": surface_dice(pred_c, ref_c, spacing_mm, tolerance_mm),
        }
    return results


# --------------------------------------------------------------------------------------------
# Classification and survival
# --------------------------------------------------------------------------------------------


def _vector(values: ArrayLike, name: str, dtype: type | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError("length mismatch: " + ", ".join(f"{k} has {v}" for k, v in lengths.items()))
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"empty input: {', '.join(lengths)} hold no items")
    return n


def _binary(values: np.ndarray, name: str) -> np.ndarray:
    if not np.isin(values, (0, 1)).all():
        bad = sorted({v.item() for v in np.unique(values) if v not in (0, 1)})[:5]
        raise ValueError(f"{name} must be binary (0/1 or False/True), found {bad}")
    return values.astype(bool)


def _finite(values: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{name} must be finite numbers, found nan or inf")
    return values


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse.ravel()]


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of a binary classifier (rank / Mann-Whitney U formula).

    ``AUC = (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``, ranks taken
    over all scores with tied scores sharing their average rank; equivalently the probability
    that a random positive scores higher than a random negative, ties counting one half.

    Args:
        labels: true classes, 0/1 or booleans (1 = positive).
        scores: the classifier's score for the positive class (higher = more positive).

    Returns:
        The AUC in [0, 1]. ``nan`` when only one class is present in ``labels``: the AUC is
        undefined then (a warning is logged) — scikit-learn raises in that case instead.

    Raises:
        ValueError: on a length mismatch, empty input, non-binary labels or non-finite scores.
    """
    y = _vector(labels, "labels")
    s = _finite(_vector(scores, "scores", float), "scores")
    _same_length(labels=y, scores=s)
    positive = _binary(y, "labels")
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        logger.warning(
            "ROC AUC is undefined with only one class in the labels (%d positive, %d negative)", n_pos, n_neg
        )
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def concordance_index(times: ArrayLike, events: ArrayLike, risk_scores: ArrayLike) -> float:
    """Harrell's concordance index (C-index) for right-censored survival data.

    A pair of patients ``(i, j)`` is comparable when ``times[i] < times[j]`` and patient ``i``
    had the event (``events[i] == 1``): then ``i`` is known to fail first. The pair is
    concordant when the model gives ``i`` the higher risk (higher risk = earlier event), and
    counts one half when the two risks are equal. Pairs with equal times are not comparable.

    Args:
        times: observed times (event or censoring), any unit.
        events: 1 (or True) when the event was observed, 0 when the time is censored.
        risk_scores: predicted risk, higher = earlier event.

    Returns:
        ``concordant pairs / comparable pairs`` in [0, 1] (0.5 = random ranking); ``nan`` when no
        pair is comparable (e.g. every time censored).

    Raises:
        ValueError: on a length mismatch, empty input, non-binary events or non-finite values.
    """
    t = _finite(_vector(times, "times", float), "times")
    e = _vector(events, "events")
    r = _finite(_vector(risk_scores, "risk_scores", float), "risk_scores")
    _same_length(times=t, events=e, risk_scores=r)
    observed = _binary(e, "events")
    concordant = 0.0
    comparable = 0
    for i in np.flatnonzero(observed):
        later = t > t[i]
        comparable += int(later.sum())
        concordant += float((r[later] < r[i]).sum()) + 0.5 * float((r[later] == r[i]).sum())
    if comparable == 0:
        logger.warning("C-index is undefined: no comparable pair (no event before another observed time)")
        return float("nan")
    return concordant / comparable


def accuracy(predictions: ArrayLike, references: ArrayLike) -> float:
    """Fraction of predictions equal to their reference.

    Raises:
        ValueError: on a length mismatch or empty input.
    """
    pred = _vector(predictions, "predictions")
    ref = _vector(references, "references")
    _same_length(predictions=pred, references=ref)
    return float(np.mean(pred == ref))


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def attribute_accuracy(
    predictions: Sequence[Mapping[str, str]],
    references: Sequence[Mapping[str, str]],
    attributes: Sequence[str] | None = None,
) -> dict[str, float]:
    """Accuracy of categorical report attributes (density, shape, margin, ...), one per attribute.

    Args:
        predictions: one mapping attribute -> predicted class per lesion (or report).
        references: the reference mappings, aligned with ``predictions``.
        attributes: attributes to score; by default the keys of
            :data:`modeling_pasta.report.CATEGORICAL_ATTRIBUTES`.

    Returns:
        ``{attribute: accuracy}`` over the items whose reference has the attribute (a value
        other than ``None``); a prediction lacking it counts as wrong. An attribute no reference
        has is ``nan``. Key ``"mean"`` is the mean over the attributes that are not ``nan``
        (``nan`` if none is scored).

    Raises:
        ValueError: on a length mismatch, empty input or an empty / clashing attribute list.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"length mismatch: predictions has {len(predictions)} item(s), references has {len(references)}"
        )
    if len(references) == 0:
        raise ValueError("empty input: predictions and references hold no items")
    names = list(CATEGORICAL_ATTRIBUTES) if attributes is None else list(attributes)
    if not names:
        raise ValueError("attributes is empty: name at least one attribute to score")
    if "mean" in names:
        raise ValueError("'mean' cannot be an attribute name: it is the key of the mean accuracy")
    result: dict[str, float] = {}
    for name in names:
        hits = [
            predicted.get(name) == reference[name]
            for predicted, reference in zip(predictions, references)
            if reference.get(name) is not None
        ]
        result[name] = float(np.mean(hits)) if hits else float("nan")
    scored = [value for value in result.values() if not math.isnan(value)]
    result["mean"] = float(np.mean(scored)) if scored else float("nan")
    return result


#: Word tokens: numbers (with an optional decimal part) or runs of letters.
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")


def _tokens(text: str) -> list[str]:
    """Lowercase word tokens; punctuation is dropped, ``"3.5"`` stays one token."""
    return _TOKEN.findall(text.lower())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token_a == token_b else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _rouge_l_f1(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    if not hypothesis and not reference:
        return 1.0
    if not hypothesis or not reference:
        return 0.0
    # F1 of P = lcs / |hyp| and R = lcs / |ref| simplifies to 2 lcs / (|hyp| + |ref|).
    return 2.0 * _lcs_length(hypothesis, reference) / (len(hypothesis) + len(reference))


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(zip(*(tokens[i:] for i in range(n))))


def _corpus_bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_length = sum(len(h) for h in hypotheses)
    ref_length = sum(len(r) for r in references)
    for hyp, ref in zip(hypotheses, references):
        for n in range(1, max_n + 1):
            hyp_counts, ref_counts = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_length == 0 or matches[0] == 0:
        return 0.0
    log_precisions = [math.log(matches[0] / totals[0])]
    log_precisions += [math.log((matches[n] + 1) / (totals[n] + 1)) for n in range(1, max_n)]
    brevity_penalty = 1.0 if hyp_length > ref_length else math.exp(1.0 - ref_length / hyp_length)
    return brevity_penalty * math.exp(sum(log_precisions) / max_n)


def text_overlap(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-L and BLEU-4 of generated report texts against reference texts.

    Both work on lowercase word tokens (numbers such as ``"3.5"`` are one token; punctuation is
    dropped), one reference per prediction.

    * ``"rouge_l"``: mean over pairs of the ROUGE-L F1, ``2 LCS / (|prediction| + |reference|)``
      with LCS the longest common token subsequence (1.0 when both texts are empty, 0.0 when
      one is).
    * ``"bleu"``: corpus BLEU-4, ``BP * exp(mean_n log p_n)`` for n = 1..4. ``p_n`` are the
      clipped n-gram precisions summed over the corpus; for n > 1 they are add-one smoothed,
      ``(matches + 1) / (candidate n-grams + 1)``, so short texts without a matching 4-gram
      still score above zero; ``p_1`` is not smoothed (no matching word gives 0). The brevity
      penalty is ``BP = exp(1 - r / c)`` when the total prediction length ``c`` does not exceed
      the total reference length ``r``, else 1. Empty predictions give 0.

    Raises:
        ValueError: on a length mismatch or empty input.
        TypeError: when an item is not a string.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"length mismatch: predictions has {len(predictions)} text(s), references has {len(references)}"
        )
    if len(references) == 0:
        raise ValueError("empty input: predictions and references hold no texts")
    for name, texts in (("predictions", predictions), ("references", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{name}[{i}] must be a string, got {type(text).__name__}")
    hyp_tokens = [_tokens(text) for text in predictions]
    ref_tokens = [_tokens(text) for text in references]
    rouge = float(np.mean([_rouge_l_f1(h, r) for h, r in zip(hyp_tokens, ref_tokens)]))
    return {"rouge_l": rouge, "bleu": _corpus_bleu(hyp_tokens, ref_tokens)}
