"""PASTA survival metric for Hugging Face ``evaluate``: Harrell's concordance index.

A thin wrapper over :func:`modeling_pasta.metrics.concordance_index`; load it from its folder:
``evaluate.load("training/metrics/pasta_survival")``.
"""

from __future__ import annotations

from typing import Sequence

import datasets
import evaluate

from modeling_pasta.metrics import concordance_index

_DESCRIPTION = """\
Harrell's concordance index (C-index) of predicted risk scores against right-censored survival
times. A pair is comparable when the patient with the shorter time had the event; it is concordant
when that patient has the higher predicted risk, and counts one half when the risks are equal.
Pairs with equal times are not comparable.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: predicted risk score per patient (float), higher = earlier event.
    references: observed time per patient (float): the event time, or the censoring time.
    events: required, one 1/True (event observed) or 0/False (censored) per patient.

Returns:
    c_index: concordant / comparable pairs in [0, 1] (0.5 = random ranking); nan when no pair
        is comparable.

Examples:
    >>> metric = evaluate.load("training/metrics/pasta_survival")
    >>> metric.compute(predictions=[0.9, 0.5, 0.1], references=[2.0, 5.0, 9.0], events=[1, 1, 0])
    {'c_index': 1.0}
"""

_CITATION = """\
@article{harrell1982cindex,
  title={Evaluating the yield of medical tests},
  author={Harrell, Frank E. and Califf, Robert M. and Pryor, David B. and Lee, Kerry L. and Rosati, Robert A.},
  journal={JAMA},
  volume={247},
  number={18},
  pages={2543--2546},
  year={1982}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PastaSurvival(evaluate.Metric):
    """Harrell's C-index of risk scores against censored survival times."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(
        self,
        predictions: Sequence[float],
        references: Sequence[float],
        events: Sequence[int] | None = None,
    ) -> dict[str, float]:
        if events is None:
            raise ValueError(
                "pasta_survival needs events=[...]: 1 where the event was observed, 0 where the time is censored"
            )
        return {"c_index": concordance_index(references, events, predictions)}
