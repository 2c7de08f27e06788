"""Scoring checkpoints on a corpus: training/evaluate.py end to end, and the scoring rules on constructed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from training_testing import load_script

from datasets_pasta.evaluation import (
    DETECTED_DICE,
    LesionRecord,
    ScanRecord,
    _lesion_regions,
    format_table,
    summarize,
)


def test_evaluate_script_scores_every_part_and_prints_the_table(pipeline_dir, tiny_corpus, tmp_path, capsys):
    script = load_script("evaluate")
    out = tmp_path / "results.json"
    assert script.main(["--model", str(pipeline_dir), "--corpus", f"{tiny_corpus}:test", "--out", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())
    overall = results["overall"]
    assert overall["scans"] == 4
    assert overall["lesions"] == len(results["lesions"]) >= 1
    for key in ("mean_lesion_dice", "lesion_type_accuracy", "attribute_accuracy", "report_rouge_l"):
        assert 0.0 <= overall[key] <= 1.0, key
    assert set(results["per_type"]) <= {"liver_cyst", "kidney_cyst", "lung_cancer"}
    for lesion in results["lesions"]:
        assert set(lesion["predicted"]) == set(lesion["reference"]) and "lesion_type" in lesion["predicted"]
        assert lesion["predicted"]["lesion_type"] != "none"
    printed = capsys.readouterr().out
    assert "| lesion type |" in printed and "mean_lesion_dice" in printed


def test_lesion_regions_give_each_voxel_to_its_nearest_lesion_within_reach():
    mask = np.zeros((40, 5, 5), dtype=np.uint8)
    mask[5, 2, 2] = 1
    mask[15, 2, 2] = 2
    regions = _lesion_regions(mask, np.array([2.0, 2.0, 2.0]))
    assert regions[9, 2, 2] == 1 and regions[11, 2, 2] == 2  # 8 mm vs 12 mm away
    assert regions[25, 2, 2] == 2 and regions[26, 2, 2] == 0  # 20 mm from lesion 2 is in, 22 mm out


def test_summary_numbers_are_the_means_and_auc_of_the_records():
    scans = [
        ScanRecord("a", "plain", True, detection_score_ml=2.0, lesion_dice=0.8),
        ScanRecord("b", "plain", False, detection_score_ml=0.0),
        ScanRecord("c", "venous", True, detection_score_ml=0.0, lesion_dice=0.0),
        ScanRecord("d", "venous", False, detection_score_ml=0.5),
    ]
    lesions = [
        LesionRecord("a", 1, "liver_cyst", 1.0, dice=0.8, hd95_mm=2.0, surface_dice=0.9,
                     predicted={"lesion_type": "liver_cyst", "shape": "round"},
                     reference={"lesion_type": "liver_cyst", "shape": "oval"}),
        LesionRecord("c", 1, "lung_cancer", 1.0, dice=0.0, surface_dice=0.0,
                     predicted={"lesion_type": "liver_cyst", "shape": "round"},
                     reference={"lesion_type": "lung_cancer", "shape": "round"}),
    ]
    results = summarize(scans, lesions)
    overall = results["overall"]
    assert overall["mean_lesion_dice"] == pytest.approx(0.4)
    assert overall["lesion_detection_rate"] == 0.5 and DETECTED_DICE < 0.8
    assert overall["mean_hd95_mm_detected"] == 2.0
    assert overall["detection_auc_plain"] == 1.0
    assert overall["detection_auc_contrast"] == 0.0
    assert overall["detection_auc"] == pytest.approx(0.625)  # positives {2, 0} vs negatives {0, 0.5}: 2.5 / 4
    assert overall["lesion_type_accuracy"] == 0.5 and overall["attribute_accuracy"] == 0.5
    assert results["per_type"]["liver_cyst"]["lesion_type_accuracy"] == 1.0
    assert results["per_type"]["lung_cancer"]["mean_dice"] == 0.0
    assert "| liver_cyst |" in format_table(results)
