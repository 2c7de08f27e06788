"""Free-text reports: every fact from the structured report, phrasing varied by the seed."""

from __future__ import annotations

import numpy as np

from datasets_pasta.report_text import render_report_text
from modeling_pasta.report import LesionReport, StructuredReport


def _report(lesions=True) -> StructuredReport:
    lesion = LesionReport(
        id=1, type="kidney_cyst", malignant=False, organ="kidney", location="left kidney, lower pole",
        size_mm=[23.4, 18.0, 15.2], volume_ml=3.1, mean_hu=8.0, density="hypodense",
        density_variation="homogeneous", shape="round", margin="well_defined", enhancement="none",
        texture="cystic", relation_to_adjacent="abutting", adjacent_organs=["left iliopsoas"],
        special_features=["exophytic"],
    )
    return StructuredReport(phase="venous", spacing_mm=[1.5, 1.5, 1.5], lesions=[lesion] if lesions else [])


def test_text_carries_the_report_facts():
    for seed in range(20):
        text = render_report_text(_report(), np.random.default_rng(seed))
        assert "left kidney, lower pole" in text.lower()
        assert "8 HU" in text
        assert "kidney cyst" in text
        assert "left iliopsoas" in text
        assert any(s in text for s in ("23 x 18 x 15 mm", "2.3 x 1.8 x 1.5 cm", "23 x 18 mm", "up to 23 mm"))


def test_phrasing_varies_with_the_seed_and_is_deterministic():
    texts = {render_report_text(_report(), np.random.default_rng(seed)) for seed in range(30)}
    assert len(texts) >= 25
    a = render_report_text(_report(), np.random.default_rng(5))
    assert a == render_report_text(_report(), np.random.default_rng(5))


def test_healthy_scan_text():
    text = render_report_text(_report(lesions=False), np.random.default_rng(0))
    assert "lesion" in text.lower() or "mass" in text.lower() or "tumor" in text.lower()
    assert "cyst" not in text
