"""PASTA classification metric for Hugging Face ``evaluate``: accuracy and binary ROC AUC.

A thin wrapper over :func:`modeling_pasta.metrics.accuracy` and :func:`modeling_pasta.metrics.roc_auc`;
load it from its folder: ``evaluate.load("training/metrics/pasta_classification")``.
"""

from __future__ import annotations

from typing import Sequence

import datasets
import evaluate

from modeling_pasta.metrics import accuracy, roc_auc

_DESCRIPTION = """\
Accuracy of predicted class ids (e.g. lesion type, malignant vs benign) and, when the positive-class
scores are passed, the binary ROC AUC computed with the rank (Mann-Whitney U) formula, tied scores
sharing their average rank.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: predicted class ids (int).
    references: reference class ids (int); 0/1 when `prediction_scores` is given.
    prediction_scores: optional score of the positive class (1) per item, higher = more positive.

Returns:
    accuracy: fraction of predictions equal to their reference.
    roc_auc: binary ROC AUC of `prediction_scores` against `references` (only when the scores
        are given); nan when the references hold a single class.

Examples:
    >>> metric = evaluate.load("training/metrics/pasta_classification")
    >>> metric.compute(predictions=[1, 0, 1], references=[1, 0, 0], prediction_scores=[0.9, 0.2, 0.6])
    {'accuracy': 0.6666666666666666, 'roc_auc': 1.0}
"""

_CITATION = """\
@article{hanley1982auc,
  title={The meaning and use of the area under a receiver operating characteristic (ROC) curve},
  author={Hanley, James A. and McNeil, Barbara J.},
  journal={Radiology},
  volume={143},
  number={1},
  pages={29--36},
  year={1982}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PastaClassification(evaluate.Metric):
    """Accuracy, plus binary ROC AUC when positive-class scores are given."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(
        self,
        predictions: Sequence[int],
        references: Sequence[int],
        prediction_scores: Sequence[float] | None = None,
    ) -> dict[str, float]:
        result = {"accuracy": accuracy(predictions, references)}
        if prediction_scores is not None:
            result["roc_auc"] = roc_auc(references, prediction_scores)
        return result
