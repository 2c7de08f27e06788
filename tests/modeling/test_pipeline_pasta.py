"""PastaPipeline end to end on a phantom: masks on the input grid, lesion table, validated report, text."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from pasta_testing import bright_lesion_segmenter, sphere_phantom, tiny_config

from modeling_pasta.image_io import save_nifti
from modeling_pasta.image_processing_pasta import PastaImageProcessor
from modeling_pasta.modeling_pasta import PastaForClassification, PastaForReportGeneration
from modeling_pasta.pipeline_pasta import PastaPipeline
from modeling_pasta.report import StructuredReport, measure_lesion, validate_report

#: An LPS grid of 2 mm voxels (a DICOM-like orientation: the pipeline must undo it).
AFFINE = np.array([[-2.0, 0, 0, 90.0], [0, -2.0, 0, 60.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def models(report_tokenizer):
    torch.manual_seed(0)
    config = tiny_config(target_spacing_mm=[2.0, 2.0, 2.0], text_config={"vocab_size": len(report_tokenizer)})
    return {
        "segmentation_model": bright_lesion_segmenter(config),
        # many small windows per forward pass: the tiny model's cost is per call, not per voxel
        "segmentation_processor": PastaImageProcessor.from_model_config(
            config, sliding_window_batch_size=16, sliding_window_overlap=0.25
        ),
        "classification_model": PastaForClassification(config),
        "report_model": PastaForReportGeneration(config),
        "tokenizer": report_tokenizer,
    }


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory):
    ct, sphere = sphere_phantom()
    folder = tmp_path_factory.mktemp("phantom")
    return save_nifti(ct, AFFINE, folder / "ct.nii.gz"), sphere


def test_full_pipeline(models, phantom_path, tmp_path):
    path, sphere = phantom_path
    prediction = PastaPipeline(**models, device="cpu")(path)

    assert prediction.lesion_mask.shape == sphere.shape and prediction.organ_map.shape == sphere.shape
    np.testing.assert_allclose(prediction.affine, AFFINE)
    assert np.array_equal(prediction.lesion_mask > 0, sphere)  # the mask overlays the lesion of the input grid
    liver = prediction.organ_labels and next(i for i, n in prediction.organ_labels.items() if n == "liver")
    assert np.all(prediction.organ_map == liver)  # lesion voxels carry their host organ

    (lesion,) = prediction.lesions
    ct = nib.load(path).get_fdata()
    measured = measure_lesion(ct, sphere, np.full(sphere.shape, 5), AFFINE, {5: "liver"})
    assert lesion.size_mm == measured.size_mm and lesion.volume_ml == measured.volume_ml
    assert (lesion.organ, lesion.location, lesion.density) == ("liver", measured.location, "hyperdense")
    assert lesion.mean_hu == 300.0
    assert set(lesion.attributes) == {
        "lesion_type",
        "malignancy",
        "density",
        "density_variation",
        "shape",
        "margin",
        "enhancement",
        "texture",
        "relation_to_adjacent",
    }
    assert all(sum(p.values()) == pytest.approx(1.0, abs=1e-3) for p in lesion.probabilities.values())
    assert set(prediction.scan_predictions) == {"detection", "phase"}

    report = prediction.report
    assert isinstance(report, StructuredReport) and len(report.lesions) == 1
    assert validate_report(report.to_dict()).to_dict() == report.to_dict()
    assert 0.0 <= report.lesions[0].confidence <= 1.0
    assert report.impression.startswith("One lesion:")
    assert isinstance(prediction.report_text, str)

    written = prediction.save(tmp_path / "out")
    mask = nib.load(written["lesion_mask"])
    np.testing.assert_allclose(mask.affine, AFFINE)
    assert np.array_equal(np.asarray(mask.dataobj) > 0, sphere)
    assert json.loads(written["report"].read_text())["lesions"][0]["size_mm"] == lesion.size_mm
    assert written["report_text"].read_text().strip() == prediction.report_text


def test_pipeline_save_and_load_round_trip(models, phantom_path, tmp_path):
    path, _ = phantom_path
    pipeline = PastaPipeline(**models, device="cpu")
    pipeline.save_pretrained(tmp_path / "pasta")
    assert {p.name for p in (tmp_path / "pasta").iterdir()} == {"segmentation", "classification", "report_generation"}
    loaded = PastaPipeline.from_pretrained(tmp_path / "pasta", device="cpu")
    first, second = pipeline(path), loaded(path)
    assert np.array_equal(first.lesion_mask, second.lesion_mask)
    assert first.report.to_dict() == second.report.to_dict()
    assert first.report_text == second.report_text


def test_a_single_checkpoint_folder_loads_its_part(models, phantom_path, tmp_path, caplog):
    path, sphere = phantom_path
    models["segmentation_model"].save_pretrained(tmp_path)
    models["segmentation_processor"].save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        pipeline = PastaPipeline.from_pretrained(tmp_path, device="cpu")
    assert set(pipeline.models) == {"segmentation"}
    assert "no classification checkpoint" in caplog.text and "no report_generation checkpoint" in caplog.text
    assert np.array_equal(pipeline(path).lesion_mask > 0, sphere)
    with pytest.raises(ValueError, match="no PASTA checkpoint found"):
        PastaPipeline.from_pretrained(tmp_path / "nothing")


def test_missing_parts_are_omitted_with_a_warning(models, phantom_path, caplog):
    path, sphere = phantom_path
    with caplog.at_level(logging.WARNING):
        segmentation_only = PastaPipeline(
            segmentation_model=models["segmentation_model"],
            segmentation_processor=models["segmentation_processor"],
            device="cpu",
        )(path)
    assert np.array_equal(segmentation_only.lesion_mask > 0, sphere) and len(segmentation_only.lesions) == 1
    assert segmentation_only.report is None and segmentation_only.report_text is None
    assert segmentation_only.lesions[0].attributes == {}
    assert "no classification model" in caplog.text and "no report-generation model" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        report_only = PastaPipeline(report_model=models["report_model"], tokenizer=models["tokenizer"], device="cpu")(
            path
        )
    assert report_only.lesion_mask is None and report_only.lesions == [] and isinstance(report_only.report_text, str)
    assert "no segmentation model" in caplog.text
    with pytest.raises(ValueError, match="needs the report tokenizer"):
        PastaPipeline(report_model=models["report_model"])
    with pytest.raises(ValueError, match="at least one model"):
        PastaPipeline()


def test_tiny_lesions_are_dropped(models):
    ct, sphere = sphere_phantom(radius=5.0)
    ct[2:4, 2:4, 2:4] = 300  # a second, 8-voxel bright speck (0.064 ml)
    parts = {
        "segmentation_model": models["segmentation_model"],
        "segmentation_processor": models["segmentation_processor"],
    }
    prediction = PastaPipeline(**parts, device="cpu", min_lesion_volume_ml=0.1)((ct, AFFINE))
    assert len(prediction.lesions) == 1 and np.array_equal(prediction.lesion_mask > 0, sphere)
    kept = PastaPipeline(**parts, device="cpu", min_lesion_volume_ml=0.01)((ct, AFFINE))
    assert len(kept.lesions) == 2 and kept.lesions[0].volume_ml > kept.lesions[1].volume_ml  # largest first
