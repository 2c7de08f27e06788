"""The local ``evaluate`` modules in training/metrics load offline and agree with modeling_pasta.metrics."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import evaluate
import numpy as np
import pytest

from modeling_pasta.metrics import (
    accuracy,
    attribute_accuracy,
    concordance_index,
    roc_auc,
    segmentation_metrics,
    text_overlap,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def load_metric(tmp_path):
    """Load a module by its folder path, with its own cache dir and experiment id."""

    def load(name: str):
        return evaluate.load(
            str(REPO_ROOT / "training" / "metrics" / name),
            cache_dir=str(tmp_path / "evaluate"),
            experiment_id=f"{name}-{uuid.uuid4().hex}",
        )

    return load


def _cases() -> tuple[list[np.ndarray], list[np.ndarray]]:
    shape = (16, 16, 16)
    first = np.zeros(shape, dtype=np.int64)
    first[2:8, 2:8, 2:8] = 1
    first[10:14, 10:14, 10:14] = 2
    second = np.zeros(shape, dtype=np.int64)
    second[4:9, 5:10, 3:9] = 1  # class 2 absent from this case
    predictions = [np.roll(first, 1, axis=0), np.roll(second, 2, axis=2)]
    predictions[1][12:14, 12:14, 12:14] = 2  # a spurious class-2 finding
    return predictions, [first, second]


def test_segmentation_module_matches_functions(load_metric):
    metric = load_metric("pasta_segmentation")
    predictions, references = _cases()
    names = {1: "liver_cancer", 2: "kidney_cyst", 3: "gallstone"}
    spacing = (2.0, 1.0, 0.5)
    result = metric.compute(
        predictions=predictions, references=references, spacing_mm=spacing, class_names=names, tolerance_mm=1.0
    )
    cases = [segmentation_metrics(p, r, spacing, names, 1.0) for p, r in zip(predictions, references)]
    assert set(result) == {"liver_cancer", "kidney_cyst", "mean_dice"}
    liver = [case["liver_cancer"] for case in cases]
    assert result["liver_cancer"]["num_cases"] == 2
    assert result["liver_cancer"]["dice"] == pytest.approx(np.mean([c["dice"] for c in liver]))
    assert result["liver_cancer"]["hd95_mm"] == pytest.approx(np.mean([c["hd95_mm"] for c in liver]))
    assert result["liver_cancer"]["surface_dice"] == pytest.approx(np.mean([c["surface_dice"] for c in liver]))
    # Case 2 has a spurious kidney_cyst: Dice 0 and NSD 0 count, its HD95 (nan) is left out.
    kidney = [case["kidney_cyst"] for case in cases]
    assert math.isnan(kidney[1]["hd95_mm"])
    assert result["kidney_cyst"]["num_cases"] == 2
    assert result["kidney_cyst"]["dice"] == pytest.approx(kidney[0]["dice"] / 2)
    assert result["kidney_cyst"]["hd95_mm"] == pytest.approx(kidney[0]["hd95_mm"])
    assert result["mean_dice"] == pytest.approx((result["liver_cancer"]["dice"] + result["kidney_cyst"]["dice"]) / 2)


def test_segmentation_module_defaults_and_per_case_spacing(load_metric):
    metric = load_metric("pasta_segmentation")
    predictions, references = _cases()
    spacings = [(1.0, 1.0, 1.0), (3.0, 1.0, 1.0)]
    result = metric.compute(
        predictions=[p.tolist() for p in predictions], references=references, spacing_mm=spacings
    )
    expected = [
        segmentation_metrics(p, r, s, {1: "lesion"}, 2.0)["lesion"]
        for p, r, s in zip(predictions, references, spacings)
    ]
    assert set(result) == {"lesion", "mean_dice"}
    assert result["lesion"]["hd95_mm"] == pytest.approx(np.mean([e["hd95_mm"] for e in expected]))
    with pytest.raises(ValueError, match="2 case"):
        metric.compute(predictions=predictions, references=references, spacing_mm=[(1.0, 1.0, 1.0)] * 3)


def test_classification_module_matches_functions(load_metric):
    metric = load_metric("pasta_classification")
    predictions = [1, 0, 1, 1, 0, 0]
    references = [1, 0, 0, 1, 1, 0]
    scores = [0.9, 0.2, 0.6, 0.6, 0.4, 0.1]
    result = metric.compute(predictions=predictions, references=references, prediction_scores=scores)
    assert result == {
        "accuracy": pytest.approx(accuracy(predictions, references)),
        "roc_auc": pytest.approx(roc_auc(references, scores)),
    }
    assert metric.compute(predictions=predictions, references=references) == {
        "accuracy": pytest.approx(4 / 6)
    }


def test_survival_module_matches_function(load_metric):
    metric = load_metric("pasta_survival")
    risks = [0.9, 0.7, 0.95, 0.3, 0.3]
    times = [2.0, 3.0, 5.0, 6.0, 8.0]
    events = [1, 0, 1, 1, 0]
    result = metric.compute(predictions=risks, references=times, events=events)
    assert result == {"c_index": pytest.approx(concordance_index(times, events, risks))}
    with pytest.raises(ValueError, match="needs events"):
        metric.compute(predictions=risks, references=times)


def test_report_module_matches_functions(load_metric):
    metric = load_metric("pasta_report")
    predictions = ["One lesion: 12 mm hypodense lesion in the pancreatic head.", "No focal lesion identified."]
    references = ["One lesion: 14 mm hypodense lesion in the pancreatic head.", "No focal lesion."]
    assert metric.compute(predictions=predictions, references=references) == pytest.approx(
        text_overlap(predictions, references)
    )
    predicted = [{"density": "hypodense", "shape": "round"}, {"density": "isodense", "shape": "oval"}]
    reference = [{"density": "hypodense", "shape": "oval"}, {"density": "isodense", "shape": "oval"}]
    result = metric.compute(
        predictions=predictions,
        references=references,
        predicted_attributes=predicted,
        reference_attributes=reference,
        attributes=["density", "shape"],
    )
    scores = attribute_accuracy(predicted, reference, ["density", "shape"])
    assert result == pytest.approx(
        {
            **text_overlap(predictions, references),
            "attribute_accuracy_density": scores["density"],
            "attribute_accuracy_shape": scores["shape"],
            "attribute_accuracy_mean": scores["mean"],
        }
    )
    with pytest.raises(ValueError, match="both"):
        metric.compute(predictions=predictions, references=references, predicted_attributes=predicted)
