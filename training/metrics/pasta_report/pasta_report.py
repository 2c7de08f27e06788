"""PASTA report metric for Hugging Face ``evaluate``: ROUGE-L, BLEU-4 and attribute accuracies.

A thin wrapper over :func:`modeling_pasta.metrics.text_overlap` and
:func:`modeling_pasta.metrics.attribute_accuracy`; load it from its folder:
``evaluate.load("training/metrics/pasta_report")``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import datasets
import evaluate

from modeling_pasta.metrics import attribute_accuracy, text_overlap

_DESCRIPTION = """\
Agreement of generated report texts with reference reports: ROUGE-L F1 (longest common
subsequence of lowercase word tokens, mean over reports) and corpus BLEU-4 (brevity penalty,
add-one smoothing of the 2- to 4-gram precisions). Optionally, the accuracy of the categorical
report attributes (density, shape, margin, enhancement, ...) of the structured reports.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: generated report texts (str).
    references: reference report texts (str), one per prediction.
    predicted_attributes: optional list of dicts attribute -> class (e.g. one per lesion).
    reference_attributes: the reference dicts, aligned with `predicted_attributes`; pass both or neither.
    attributes: optional list of attribute names to score; by default the categorical
        attributes of the report schema (modeling_pasta.report.CATEGORICAL_ATTRIBUTES).

Returns:
    rouge_l: mean ROUGE-L F1 over the reports.
    bleu: corpus BLEU-4.
    With attributes given, also `attribute_accuracy_<name>` for every attribute (over the
    items whose reference has it; nan if none has) and `attribute_accuracy_mean`, their mean.

Examples:
    >>> metric = evaluate.load("training/metrics/pasta_report")
    >>> metric.compute(predictions=["a 12 mm hypodense lesion"], references=["a 12 mm hypodense lesion"])
    {'rouge_l': 1.0, 'bleu': 1.0}
"""

_CITATION = """\
@inproceedings{lin2004rouge,
  title={ROUGE: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out},
  pages={74--81},
  year={2004}
}
@inproceedings{papineni2002bleu,
  title={BLEU: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={Proceedings of the 40th Annual Meeting of the Association for Computational Linguistics},
  pages={311--318},
  year={2002}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PastaReport(evaluate.Metric):
    """ROUGE-L and BLEU-4 of report texts, plus optional structured-attribute accuracies."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        predicted_attributes: Sequence[Mapping[str, str]] | None = None,
        reference_attributes: Sequence[Mapping[str, str]] | None = None,
        attributes: Sequence[str] | None = None,
    ) -> dict[str, float]:
        result = text_overlap(predictions, references)
        if (predicted_attributes is None) != (reference_attributes is None):
            raise ValueError("pass both predicted_attributes and reference_attributes, or neither")
        if predicted_attributes is not None:
            scores = attribute_accuracy(predicted_attributes, reference_attributes, attributes)
            result.update({f"attribute_accuracy_{name}": value for name, value in scores.items()})
        return result
