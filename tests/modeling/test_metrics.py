"""Evaluation metrics, checked against hand-worked values and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage, spatial, stats
from sklearn.metrics import roc_auc_score

from modeling_pasta.metrics import (
    accuracy,
    attribute_accuracy,
    concordance_index,
    dice_score,
    hausdorff95_mm,
    roc_auc,
    segmentation_metrics,
    surface_dice,
    text_overlap,
)
from modeling_pasta.report import CATEGORICAL_ATTRIBUTES

SPACING = (2.0, 1.0, 0.5)


def _box(shape: tuple[int, ...], *slices: slice, value: int = 1) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.int64)
    mask[slices] = value
    return mask


def _edge_distances_mm(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Independent surface distances: edge voxels = mask minus its erosion, nearest edge voxel in mm."""
    a, b = a.astype(bool), b.astype(bool)
    edge_a = np.argwhere(a & ~ndimage.binary_erosion(a)) * np.asarray(spacing)
    edge_b = np.argwhere(b & ~ndimage.binary_erosion(b)) * np.asarray(spacing)
    a_to_b = spatial.cKDTree(edge_b).query(edge_a)[0]
    b_to_a = spatial.cKDTree(edge_a).query(edge_b)[0]
    return a_to_b, b_to_a


# ------------------------------------------------------------------------------- segmentation


def test_dice_hand_built_masks():
    reference = _box((8, 8, 8), slice(2, 4), slice(2, 4), slice(2, 4), value=3)  # 8 voxels
    prediction = _box((8, 8, 8), slice(2, 4), slice(2, 4), slice(3, 6), value=7)  # 12 voxels, 4 shared
    assert dice_score(prediction, reference) == pytest.approx(2 * 4 / (8 + 12))
    assert dice_score(reference, reference) == 1.0


def test_dice_empty_masks():
    empty = np.zeros((4, 4, 4))
    full = np.ones((4, 4, 4))
    assert dice_score(empty, empty) == 1.0
    assert dice_score(empty, full) == 0.0
    assert dice_score(full, empty) == 0.0


def test_hd95_far_cubes_anisotropic():
    # Two 4-voxel cubes 10 voxels apart along axis 0: every edge voxel's nearest edge voxel on the
    # other cube lies straight along axis 0, at 7, 8, 9 or 10 voxels; the 95th percentile is 10.
    shape = (20, 12, 12)
    a = _box(shape, slice(2, 6), slice(4, 8), slice(4, 8))
    b = _box(shape, slice(12, 16), slice(4, 8), slice(4, 8))
    assert hausdorff95_mm(a, b, SPACING) == pytest.approx(10 * 2.0)
    # The same cubes offset along axis 2 (0.5 mm voxels): the spacing follows the axis.
    a_t, b_t = (np.moveaxis(m, 0, 2) for m in (a, b))
    assert hausdorff95_mm(a_t, b_t, SPACING) == pytest.approx(10 * 0.5)
    assert surface_dice(a, b, SPACING, tolerance_mm=2.0) == 0.0


def test_hd95_and_surface_dice_match_independent_computation():
    shape = (16, 20, 20)
    reference = _box(shape, slice(3, 11), slice(4, 14), slice(4, 14))
    prediction = _box(shape, slice(4, 12), slice(6, 16), slice(3, 13))
    a_to_b, b_to_a = _edge_distances_mm(prediction, reference, SPACING)
    expected_hd95 = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    assert expected_hd95 < max(a_to_b.max(), b_to_a.max())  # the percentile matters here
    assert hausdorff95_mm(prediction, reference, SPACING) == pytest.approx(expected_hd95, rel=1e-5)
    for tolerance in (0.5, 1.0, 2.0):
        both = np.concatenate([a_to_b, b_to_a])
        expected_nsd = float((both <= tolerance + 1e-9).mean())
        assert surface_dice(prediction, reference, SPACING, tolerance) == pytest.approx(expected_nsd, rel=1e-5)


def test_surface_metrics_empty_masks():
    empty = np.zeros((8, 8, 8))
    cube = _box((8, 8, 8), slice(2, 5), slice(2, 5), slice(2, 5))
    assert math.isnan(hausdorff95_mm(empty, cube, SPACING))
    assert math.isnan(hausdorff95_mm(cube, empty, SPACING))
    assert math.isnan(hausdorff95_mm(empty, empty, SPACING))
    assert math.isnan(surface_dice(empty, empty, SPACING))
    assert surface_dice(cube, empty, SPACING) == 0.0
    assert surface_dice(cube, cube, SPACING) == 1.0
    assert hausdorff95_mm(cube, cube, SPACING) == 0.0


def test_segmentation_metrics_per_class():
    shape = (16, 16, 16)
    reference = _box(shape, slice(2, 8), slice(2, 8), slice(2, 8))
    reference[10:14, 10:14, 10:14] = 2
    prediction = np.roll(reference, 1, axis=1)
    names = {0: "background", 1: "liver_cancer", 2: "kidney_cyst", 3: "gallstone"}
    result = segmentation_metrics(prediction, reference, SPACING, names, tolerance_mm=1.0)
    assert list(result) == ["liver_cancer", "kidney_cyst"]  # background skipped, absent class 3 left out
    for class_id, name in ((1, "liver_cancer"), (2, "kidney_cyst")):
        pred_c, ref_c = prediction == class_id, reference == class_id
        assert result[name] == {
            "dice": dice_score(pred_c, ref_c),
            "hd95_mm": hausdorff95_mm(pred_c, ref_c, SPACING),
            "surface_dice": surface_dice(pred_c, ref_c, SPACING, 1.0),
        }
    assert result["liver_cancer"]["dice"] == pytest.approx(5 / 6)  # a 6-voxel side shifted by one
    assert result["kidney_cyst"]["hd95_mm"] == pytest.approx(1.0)


def test_segmentation_errors_name_the_problem():
    shapes = r"prediction mask has shape \(4, 4, 4\), reference mask has shape \(4, 4, 5\)"
    with pytest.raises(ValueError, match=shapes):
        dice_score(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match=r"\(8, 8, 8\).*\(8, 8\)"):
        segmentation_metrics(np.zeros((8, 8, 8)), np.zeros((8, 8)), SPACING, {1: "lesion"})
    cube = _box((8, 8, 8), slice(2, 5), slice(2, 5), slice(2, 5))
    with pytest.raises(ValueError, match="spacing_mm has 2 value"):
        hausdorff95_mm(cube, cube, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        surface_dice(cube, cube, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance_mm"):
        surface_dice(cube, cube, SPACING, tolerance_mm=-1.0)


# ---------------------------------------------------------------------- classification, survival


def test_roc_auc_hand_example_and_ties():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # One positive tied with one negative: that pair counts one half -> (1 + 0.5) / 2.
    assert roc_auc([0, 1, 0], [0.2, 0.5, 0.5]) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=60)
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # rounding creates many ties
    assert len(np.unique(scores)) < len(scores)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert roc_auc(labels.astype(bool), scores) == pytest.approx(roc_auc_score(labels, scores))


def test_roc_auc_single_class_and_errors():
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="labels must be binary"):
        roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="labels has 3, scores has 2"):
        roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0, 1], [0.1, float("nan")])


def test_concordance_index_hand_example_with_censoring():
    times = [2.0, 3.0, 5.0, 6.0, 8.0]
    events = [1, 0, 1, 1, 0]
    risks = [0.9, 0.7, 0.95, 0.3, 0.3]
    # Comparable pairs (earlier time has the event):
    #   patient 0 (t=2, r=0.9) vs 1, 2, 3, 4: concordant, discordant (0.95), concordant, concordant
    #   patient 2 (t=5, r=0.95) vs 3, 4: concordant, concordant
    #   patient 3 (t=6, r=0.3) vs 4 (r=0.3): tied risk -> 0.5
    #   patient 1 is censored at t=3: never the earlier member of a pair.
    assert concordance_index(times, events, risks) == pytest.approx(5.5 / 7)


def test_concordance_index_equals_kendall_without_ties_or_censoring():
    rng = np.random.default_rng(3)
    times = rng.permutation(40).astype(float) + 1.0
    risks = -times + rng.normal(0, 8, size=40)
    tau = stats.kendalltau(risks, -times).statistic
    assert concordance_index(times, np.ones(40), risks) == pytest.approx((tau + 1) / 2)


def test_concordance_index_edge_cases():
    assert math.isnan(concordance_index([1.0, 1.0], [1, 1], [0.2, 0.8]))  # equal times: no pair
    assert math.isnan(concordance_index([1.0, 2.0], [0, 0], [0.2, 0.8]))  # all censored
    with pytest.raises(ValueError, match="times has 3, events has 2, risk_scores has 3"):
        concordance_index([1.0, 2.0, 3.0], [1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="events must be binary"):
        concordance_index([1.0, 2.0], [1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="one-dimensional"):
        concordance_index(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))


def test_accuracy():
    assert accuracy([1, 2, 3], [1, 2, 4]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="predictions has 2, references has 3"):
        accuracy([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


# ---------------------------------------------------------------------------------------- reports


def test_attribute_accuracy():
    predictions = [
        {"density": "hypodense", "shape": "round"},
        {"density": "hyperdense", "shape": "oval"},
        {"shape": "oval"},
    ]
    references = [
        {"density": "hypodense", "shape": "round"},
        {"density": "hyperdense"},
        {"density": "isodense", "shape": "lobulated"},
    ]
    result = attribute_accuracy(predictions, references)
    assert list(result) == [*CATEGORICAL_ATTRIBUTES, "mean"]
    assert result["density"] == pytest.approx(2 / 3)  # the third prediction lacks it: wrong
    assert result["shape"] == pytest.approx(1 / 2)  # only two references have a shape
    assert math.isnan(result["margin"])
    assert result["mean"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert attribute_accuracy(predictions, references, ["shape"]) == {"shape": 0.5, "mean": 0.5}
    with pytest.raises(ValueError, match="predictions has 3 item"):
        attribute_accuracy(predictions, references[:2])


def test_text_overlap_hand_worked():
    result = text_overlap(["The cat sat on the mat."], ["the cat is on the mat"])
    # LCS "the cat on the mat" = 5 of 6 + 6 tokens.
    assert result["rouge_l"] == pytest.approx(2 * 5 / 12)
    # p1 = 5/6; p2..p4 add-one smoothed: (3+1)/(5+1), (1+1)/(4+1), (0+1)/(3+1); equal lengths, BP = 1.
    assert result["bleu"] == pytest.approx((5 / 6 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)


def test_text_overlap_corpus_bleu_brevity_penalty():
    predictions = ["the cat sat on the mat", "the cat"]
    references = ["the cat is on the mat", "the cat sat on the mat"]
    result = text_overlap(predictions, references)
    assert result["rouge_l"] == pytest.approx((10 / 12 + 2 * 2 / 8) / 2)
    # Corpus counts: 1-grams 7/8, 2-grams (4+1)/(6+1), 3-grams (1+1)/(4+1), 4-grams (0+1)/(3+1);
    # c = 8 tokens, r = 12 -> BP = exp(1 - 12/8).
    expected = math.exp(1 - 12 / 8) * (7 / 8 * 5 / 7 * 2 / 5 * 1 / 4) ** 0.25
    assert result["bleu"] == pytest.approx(expected)
    assert text_overlap(["the cat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(math.exp(-2))


def test_text_overlap_tokens_and_edge_cases():
    assert text_overlap(["A 3.5 mm cyst."], ["a 3.5 MM cyst"]) == {"rouge_l": 1.0, "bleu": 1.0}
    assert text_overlap(["nothing shared"], ["no overlap"]) == {"rouge_l": 0.0, "bleu": 0.0}
    assert text_overlap([""], ["a lesion"]) == {"rouge_l": 0.0, "bleu": 0.0}
    with pytest.raises(ValueError, match="predictions has 1 text"):
        text_overlap(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        text_overlap([], [])
    with pytest.raises(TypeError, match=r"references\[0\] must be a string"):
        text_overlap(["a"], [3])
