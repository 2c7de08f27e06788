"""PASTA segmentation metric for Hugging Face ``evaluate``: Dice, HD95 and surface Dice per class.

A thin wrapper over :func:`modeling_pasta.metrics.segmentation_metrics`; load it from its folder:
``evaluate.load("training/metrics/pasta_segmentation")``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import datasets
import evaluate
import numpy as np

from modeling_pasta.metrics import segmentation_metrics

_DESCRIPTION = """\
Per-class segmentation quality of 3D label volumes (0 = background, k = class k): the Dice
coefficient, the 95th-percentile symmetric Hausdorff distance in mm (HD95) and the normalized
surface Dice at a tolerance in mm. HD95 and surface Dice are computed by MONAI on the masks'
edge voxels with the voxel spacing in mm. Each case is scored with
modeling_pasta.metrics.segmentation_metrics, then the cases are aggregated per class.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: predicted label volumes, one 3D integer array (nested lists) per case.
    references: reference label volumes, same shapes as the predictions.
    spacing_mm: voxel size in mm along the three array axes, one triple for all cases
        (default (1.0, 1.0, 1.0)) or one triple per case.
    class_names: class id -> name of the classes to score (default {1: "lesion"}); id 0 is skipped.
    tolerance_mm: surface Dice tolerance in mm (default 2.0).

Returns:
    For every named class present (in the prediction or the reference) in at least one case,
    `{class_name: {"dice", "hd95_mm", "surface_dice", "num_cases"}}`:
        dice: mean Dice over the cases where the class is present;
        hd95_mm: mean HD95 over those cases, leaving out cases where the prediction or the
            reference is empty (HD95 undefined); nan if none is left;
        surface_dice: mean surface Dice over those cases (0 where exactly one mask is empty);
        num_cases: number of cases where the class is present.
    "mean_dice": the mean over classes of the per-class mean Dice (nan if no class is present).
    Cases where a class is absent from both volumes do not count for that class.

Examples:
    >>> metric = evaluate.load("training/metrics/pasta_segmentation")
    >>> reference = np.zeros((16, 16, 16), dtype=int); reference[4:8, 4:8, 4:8] = 1
    >>> result = metric.compute(predictions=[reference], references=[reference], spacing_mm=(1.5, 1.0, 1.0))
    >>> result["lesion"]["dice"], result["mean_dice"]
    (1.0, 1.0)
"""

_CITATION = """\
@article{nikolov2021surfacedice,
  title={Clinically Applicable Segmentation of Head and Neck Anatomy for Radiotherapy:
         Deep Learning Algorithm Development and Validation Study},
  author={Nikolov, Stanislav and others},
  journal={Journal of Medical Internet Research},
  volume={23},
  number={7},
  pages={e26151},
  year={2021}
}
@article{cardoso2022monai,
  title={MONAI: An open-source framework for deep learning in healthcare},
  author={Cardoso, M. Jorge and others},
  journal={arXiv preprint arXiv:2211.02701},
  year={2022}
}
"""


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PastaSegmentation(evaluate.Metric):
    """Dice, HD95 (mm) and surface Dice per class of 3D label volumes."""

    def _info(self) -> evaluate.MetricInfo:
        volume = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("int64"))))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": volume, "references": volume}),
            reference_urls=["https://docs.monai.io/en/stable/metrics.html"],
        )

    def _compute(
        self,
        predictions: Sequence,
        references: Sequence,
        spacing_mm: Sequence[float] | Sequence[Sequence[float]] = (1.0, 1.0, 1.0),
        class_names: Mapping[int, str] | None = None,
        tolerance_mm: float = 2.0,
    ) -> dict:
        names = {int(k): str(v) for k, v in (class_names or {1: "lesion"}).items()}
        spacing = np.asarray(spacing_mm, dtype=float)
        if spacing.ndim == 2:
            if len(spacing) != len(predictions):
                raise ValueError(
                    f"spacing_mm holds {len(spacing)} per-case spacing(s) for {len(predictions)} case(s)"
                )
            spacings = [tuple(s) for s in spacing]
        else:
            spacings = [tuple(spacing)] * len(predictions)
        cases = [
            segmentation_metrics(np.asarray(pred), np.asarray(ref), case_spacing, names, tolerance_mm)
            for pred, ref, case_spacing in zip(predictions, references, spacings)
        ]
        result: dict = {}
        for class_id in sorted(names):
            name = names[class_id]
            rows = [case[name] for case in cases if name in case]
            if not rows:
                continue
            result[name] = {
                "dice": float(np.mean([row["dice"] for row in rows])),
                "hd95_mm": _nanmean([row["hd95_mm"] for row in rows]),
                "surface_dice": _nanmean([row["surface_dice"] for row in rows]),
                "num_cases": len(rows),
            }
        class_dice = [scores["dice"] for scores in result.values()]
        result["mean_dice"] = float(np.mean(class_dice)) if class_dice else float("nan")
        return result
