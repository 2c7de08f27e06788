"""The learned synthesis stage in generation: refinement stays in the lesion, is seeded, and QC filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pasta_testing import bright_lesion_segmenter, sphere_phantom, tiny_config

from datasets_pasta.corpus import GenerationConfig, decode_sample, generate_corpus, load_corpus
from datasets_pasta.lesions import blend_weight
from datasets_pasta.phantom import make_phantom
from datasets_pasta.sample import generate_sample
from datasets_pasta.synthesis import (
    LesionQualityControl,
    LesionRefiner,
    LesionSynthesis,
    QualityControlError,
    corpus_lesion_crops,
    lesion_window,
    stack_crops,
)
from modeling_pasta import PastaForLesionSynthesis
from modeling_pasta.image_processing_pasta import PastaImageProcessor
from modeling_pasta.report import measure_lesion

SPACING = 6.0
BOUND_HU = 90.0


@pytest.fixture(scope="module")
def base():
    return make_phantom(spacing_mm=SPACING, seed=3, phase="venous")


@pytest.fixture(scope="module")
def refiner_dir(tmp_path_factory):
    """A refiner with a randomised head (so it changes lesions), saved as a checkpoint folder."""
    model = PastaForLesionSynthesis(tiny_config(target_spacing_mm=[SPACING] * 3, synthesis_residual_bound_hu=BOUND_HU))
    torch.manual_seed(0)
    with torch.no_grad():
        model.residual_head.weight.normal_(std=2.0)
        model.residual_head.bias.fill_(0.5)
    folder = tmp_path_factory.mktemp("refiner")
    model.save_pretrained(folder)
    return folder


def _qc(threshold_sd: float, qc_threshold: float = 0.7, attempts: int = 3, spacing: float = SPACING):
    config = tiny_config(target_spacing_mm=[spacing] * 3, patch_size=[16, 16, 16])
    model = bright_lesion_segmenter(config, threshold=threshold_sd)
    processor = PastaImageProcessor.from_model_config(config)
    return LesionQualityControl(model, processor, threshold=qc_threshold, max_attempts=attempts)


def test_lesion_window_is_divisible_inside_and_covers_the_region():
    region = np.zeros((30, 20, 6), dtype=bool)
    region[3:9, 15:19, 2:5] = True
    box, pad = lesion_window(region, region.shape, divisor=8, margin_vox=2)
    for axis, (s, (before, after)) in enumerate(zip(box, pad)):
        assert 0 <= s.start and s.stop <= region.shape[axis]
        assert (s.stop - s.start + before + after) % 8 == 0
    assert region[box].sum() == region.sum()
    assert pad[2] == (1, 1) and box[2] == slice(0, 6)  # axis shorter than the window: padded


def test_refiner_changes_only_the_blended_lesion_and_keeps_other_lesions(base, refiner_dir):
    refiner = LesionRefiner.from_pretrained(refiner_dir)
    ct = base.ct_hu.astype(np.float32)
    before = ct.copy()
    lesion, _ = sphere_phantom(ct.shape, center=np.argwhere(base.organ_map == 5).mean(axis=0), radius=3)
    protected = np.zeros_like(lesion)
    protected[tuple(np.argwhere(lesion)[0])] = True  # pretend one voxel belongs to an earlier lesion
    protected &= ~lesion
    residual = refiner.refine(ct, lesion, base.organ_map == 5, "liver_cancer", base.spacing_mm, edge_mm=4.0)
    weight = np.zeros(ct.shape, dtype=np.float32)
    weight[:] = blend_weight(lesion, base.spacing_mm, max(4.0, 1.25 * SPACING))
    changed = ct != before
    assert changed.any() and not changed[weight == 0].any()
    np.testing.assert_allclose(ct - before, residual, atol=1e-3)
    assert np.abs(residual).max() <= BOUND_HU + 1e-3


def test_generation_with_a_refiner_is_deterministic_and_differs_only_in_the_lesion(base, refiner_dir):
    synthesis = LesionSynthesis(refiner=LesionRefiner.from_pretrained(refiner_dir))
    a = generate_sample(base, ["liver_cancer"], seed=11, case_id="a", synthesis=synthesis)
    b = generate_sample(base, ["liver_cancer"], seed=11, case_id="b", synthesis=synthesis)
    plain = generate_sample(base, ["liver_cancer"], seed=11, case_id="p")
    np.testing.assert_array_equal(a.ct_hu, b.ct_hu)
    np.testing.assert_array_equal(a.lesion_mask, plain.lesion_mask)  # same shape, only the voxels differ
    diff = a.ct_hu.astype(int) - plain.ct_hu
    assert diff.any()
    near = np.zeros(a.ct_hu.shape, dtype=bool)
    near[lesion_window(a.lesion_mask > 0, a.ct_hu.shape, 1, margin_vox=2)[0]] = True
    assert not diff[~near].any()
    assert np.abs(diff).max() <= BOUND_HU + 1
    # the report is measured from the refined voxels
    measured = measure_lesion(a.ct_hu, a.lesion_mask == 1, base.organ_map, base.affine, base.label_names,
                              host_organ="liver")
    assert a.report.lesions[0].mean_hu == pytest.approx(measured.mean_hu, abs=0.051)
    assert a.report.lesions[0].mean_hu == pytest.approx(float(a.ct_hu[a.lesion_mask == 1].mean()), abs=0.051)


def test_quality_control_keeps_a_lesion_the_segmenter_finds_and_rejects_one_it_misses():
    ct, sphere = sphere_phantom(shape=(40, 36, 32), radius=5.0, lesion_hu=300)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    qc = _qc(threshold_sd=1.5, spacing=2.0)
    assert qc.detected_fraction(ct, affine, sphere) > 0.9  # bright: found
    dark, _ = sphere_phantom(shape=(40, 36, 32), radius=5.0, lesion_hu=-60)
    assert qc.detected_fraction(dark, affine, sphere) < 0.05  # dark: missed
    with pytest.raises(ValueError, match="share of the lesion's voxels"):
        _qc(1.5, qc_threshold=1.5)


def test_generation_redraws_rejected_lesions_and_reports_them(base):
    never = LesionSynthesis(quality_control=_qc(threshold_sd=1e6, attempts=3))
    with pytest.raises(QualityControlError, match="rejected 3 liver_cancer") as info:
        generate_sample(base, ["liver_cancer"], seed=4, case_id="x", synthesis=never)
    assert info.value.records[0]["detected_fractions"] == [0.0, 0.0, 0.0]
    assert info.value.records[0]["kept"] is False
    always = LesionSynthesis(quality_control=_qc(threshold_sd=-1e6, attempts=3))
    sample = generate_sample(base, ["liver_cancer", "kidney_cyst"], seed=4, case_id="y", synthesis=always)
    assert [r["passed"] for r in sample.synthesis_log] == [[True], [True]]
    assert sample.synthesis_log[0]["detected_fractions"] == [1.0]
    # QC alone does not change the voxels of a kept lesion
    np.testing.assert_array_equal(sample.ct_hu, generate_sample(base, ["liver_cancer", "kidney_cyst"], seed=4, case_id="y").ct_hu)


def test_corpus_with_refiner_and_qc_reports_the_rate_and_resumes(tmp_path, refiner_dir):
    qc_dir = tmp_path / "qc"
    config = tiny_config(target_spacing_mm=[10.0] * 3, patch_size=[16, 16, 16])
    bright_lesion_segmenter(config, threshold=-1e6).save_pretrained(qc_dir)  # finds every lesion
    settings = dict(
        out_dir=tmp_path / "corpus", num_samples=2, seed=1, spacing_mm=10.0, lesion_types=["liver_cyst"],
        healthy_fraction=0.0, refiner=str(refiner_dir), quality_control=True, qc_model=str(qc_dir),
        qc_threshold=0.5, phases=["venous"],
    )
    summary = generate_corpus(GenerationConfig(**settings), progress=False)
    assert summary["quality_control"] == {
        "lesions": 2, "attempts": 2, "rejected": 0, "pass_rate": 1.0, "mean_detected_fraction": 1.0,
    }
    rows = list(load_corpus(str(tmp_path / "corpus"), "train", decode=False))
    sample = decode_sample(rows[0])
    crops = corpus_lesion_crops(sample, (16, 16, 16))
    batch = stack_crops(crops, ["none", "liver_cyst"])
    assert batch["ct_hu"].shape == (len(crops), 1, 16, 16, 16) and batch["lesion_type_ids"].tolist() == [1] * len(crops)
    assert set(np.unique(batch["labels"].numpy())) <= {0, 1, 2} and (batch["labels"] == 2).any()
    card = (tmp_path / "corpus" / "README.md").read_text()
    assert "--refiner" in card and "--quality-control" in card
    again = generate_corpus(GenerationConfig(**settings), progress=False)  # resume: nothing to do
    assert again["files_written"] == [] and again["quality_control"]["lesions"] == 0
    with pytest.raises(Exception, match="different run|other settings"):
        generate_corpus(GenerationConfig(**{**settings, "qc_threshold": 0.9}), progress=False)


def test_cli_names_a_missing_refiner(tmp_path, capsys):
    from datasets_pasta.cli import main

    code = main(["generate", "--source", "phantom", "--out", str(tmp_path / "c"), "--num-samples", "1",
                 "--refiner", str(tmp_path / "nothing")])
    assert code == 2
    assert "no refiner checkpoint there" in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_refiner_generates_the_same_corpus_twice(tmp_path):
    from datasets_pasta.cli import main
    from datasets_pasta.predict import SHIPPED_MODEL

    refiner = SHIPPED_MODEL.parent / "pasta-refiner"
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        code = main(["generate", "--source", "phantom", "--out", str(out), "--num-samples", "1", "--seed", "3",
                     "--spacing", "2", "--lesion-types", "kidney_cyst", "--healthy-fraction", "0", "--phases", "venous",
                     "--phantom-fov-mm", "240,200,160", "--refiner", str(refiner), "--no-progress"])
        assert code == 0
        outputs.append(decode_sample(next(iter(load_corpus(str(out), "train", decode=False)))))
    a, b = outputs
    np.testing.assert_array_equal(a.ct_hu, b.ct_hu)
    assert a.report.to_dict() == b.report.to_dict()
    assert a.report.lesions[0].mean_hu == pytest.approx(float(a.ct_hu[a.lesion_mask == 1].mean()), abs=0.051)
