"""Training examples from corpus scans: grids, patch sampling, labels, streaming and batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets_pasta.patches import (
    CorpusPatchStream,
    classification_examples,
    collate_examples,
    examples_for_stage,
    lesion_labels,
    patch_center,
    report_example,
    segmentation_examples,
    to_model_grid,
)
from datasets_pasta.sample import CorpusSample
from modeling_pasta.image_processing_pasta import PastaImageProcessor, crop_or_pad
from modeling_pasta.organs import TOTALSEGMENTATOR_TOTAL, name_to_id
from modeling_pasta.report import StructuredReport
from modeling_pasta.tokenization_pasta import train_report_tokenizer
from modeling_pasta.variants import pasta_config

LIVER = name_to_id(TOTALSEGMENTATOR_TOTAL)["liver"]


def lesion_entry(lesion_id: int, lesion_type: str = "liver_cyst") -> dict:
    return {
        "id": lesion_id,
        "type": lesion_type,
        "malignant": False,
        "organ": "liver",
        "location": "segment VIII",
        "size_mm": [8.0, 6.0, 6.0],
        "volume_ml": 0.2,
        "mean_hu": 5.0,
        "density": "hypodense",
        "density_variation": "homogeneous",
        "shape": "round",
        "margin": "well_defined",
        "enhancement": "none",
        "texture": "cystic",
        "relation_to_adjacent": "clear",
        "adjacent_organs": [],
        "special_features": [],
    }


def make_sample(shape=(24, 20, 28), spacing=4.0, lesions=((6, 6, 8),), flip_x=False) -> CorpusSample:
    """A box liver with cubic lesions at the given voxel corners (3 voxels wide)."""
    ct = np.full(shape, -900, dtype=np.int16)
    organs = np.zeros(shape, dtype=np.uint8)
    organs[4:20, 4:16, 4:24] = LIVER
    ct[organs > 0] = 60
    mask = np.zeros(shape, dtype=np.uint8)
    for k, (x, y, z) in enumerate(lesions, start=1):
        mask[x : x + 3, y : y + 3, z : z + 3] = k
        ct[mask == k] = 5
    affine = np.diag([spacing, spacing, spacing, 1.0])
    if flip_x:  # the same scan stored in LAS voxel order
        ct, organs, mask = ct[::-1].copy(), organs[::-1].copy(), mask[::-1].copy()
        affine = affine @ np.array([[-1, 0, 0, shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    report = StructuredReport.from_dict(
        {
            "schema_version": "1.0",
            "modality": "CT",
            "phase": "venous",
            "spacing_mm": [spacing] * 3,
            "lesions": [lesion_entry(k) for k in range(1, len(lesions) + 1)],
            "impression": "",
        }
    )
    return CorpusSample(
        case_id="case-1",
        ct_hu=ct,
        lesion_mask=mask,
        organ_map=organs,
        pet_suv=None,
        affine=affine,
        lesion_types=["liver_cyst"] * len(lesions),
        phase="venous",
        report=report,
        report_text="A 8 mm hypodense cyst in liver segment VIII.",
        base_id="box",
        seed=0,
    )


@pytest.fixture
def config():
    return pasta_config("pasta_tiny")  # 16^3 patches at 4 mm


@pytest.fixture
def processor(config):
    return PastaImageProcessor.from_model_config(config)


def test_model_grid_reorients_labels_with_the_image(processor):
    ras = to_model_grid(make_sample(), processor)
    las = to_model_grid(make_sample(flip_x=True), processor)
    np.testing.assert_array_equal(ras.lesion_mask, las.lesion_mask)
    np.testing.assert_array_equal(ras.organ_map, las.organ_map)
    np.testing.assert_allclose(ras.pixel_values, las.pixel_values, atol=1e-5)
    np.testing.assert_allclose(ras.affine, las.affine)
    assert ras.pixel_values.shape == (1, 24, 20, 28) and ras.pixel_values.dtype == np.float32


def test_model_grid_resamples_to_the_model_spacing(config):
    processor = PastaImageProcessor.from_model_config(config, target_spacing_mm=[8.0, 8.0, 8.0])
    scan = to_model_grid(make_sample(), processor)
    assert scan.organ_map.shape == (12, 10, 14)
    np.testing.assert_allclose(scan.spacing_mm, 8.0)
    assert set(np.unique(scan.organ_map)) == {0, LIVER}


def test_crop_or_pad_is_the_same_window_for_numpy_and_torch():
    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7)
    for center in [(0, 0, 0), (2.5, 3, 3.5), (4, 6, 1)]:
        numpy_crop = crop_or_pad(array, center, (4, 4, 4))
        torch_crop = crop_or_pad(torch.from_numpy(array), center, (4, 4, 4)).numpy()
        np.testing.assert_array_equal(numpy_crop, torch_crop)
    crop = crop_or_pad(array, (0, 0, 0), (4, 4, 4))
    assert crop[0, 2, 2, 2] == array[0, 0, 0, 0] and crop[0, 0, 0, 0] == 0  # padded before the volume


def test_lesion_fraction_one_centres_every_patch_on_a_lesion(processor):
    scan = to_model_grid(make_sample(lesions=((6, 6, 8), (14, 10, 18))), processor)
    rng = np.random.default_rng(0)
    for _ in range(20):
        center = patch_center(scan, (16, 16, 16), rng, lesion_fraction=1.0)
        assert scan.lesion_mask[tuple(center.astype(int))] > 0


def test_segmentation_targets_merge_organs_and_put_lesions_on_top(processor, config):
    scan = to_model_grid(make_sample(), processor)
    examples = segmentation_examples(scan, config, np.random.default_rng(1), num_patches=3, lesion_fraction=1.0)
    assert len(examples) == 3
    liver, lesion = config.label2id["liver"], config.lesion_label_id
    for example in examples:
        assert example["pixel_values"].shape == (1, 16, 16, 16)
        assert example["labels"].shape == (16, 16, 16) and example["labels"].dtype == np.int64
        assert set(np.unique(example["labels"])) <= {0, liver, lesion}
        assert (example["labels"] == lesion).sum() == 27  # the whole 3x3x3 lesion fits in the patch


def test_lesion_labels_follow_the_config_classes(config):
    lesion = StructuredReport.from_dict(
        {
            "schema_version": "1.0",
            "modality": "CT",
            "phase": "plain",
            "spacing_mm": [1, 1, 1],
            "lesions": [lesion_entry(1)],
            "impression": "",
        }
    ).lesions[0]
    tasks = config.classification_tasks
    labels = lesion_labels(config, lesion, "plain", present=True)
    assert labels["lesion_type"] == tasks["lesion_type"].index("liver_cyst")
    assert labels["malignancy"] == tasks["malignancy"].index("benign")
    assert labels["shape"] == tasks["shape"].index("round")
    assert labels["phase"] == tasks["phase"].index("plain")
    assert labels["detection"] == tasks["detection"].index("present")
    negative = lesion_labels(config, None, "venous", present=False)
    assert negative["lesion_type"] == tasks["lesion_type"].index("none")
    assert negative["malignancy"] == -100 and negative["shape"] == -100
    assert negative["detection"] == tasks["detection"].index("absent")


def test_classification_examples_centre_each_lesion_with_its_own_mask(processor, config):
    scan = to_model_grid(make_sample(lesions=((6, 6, 8), (14, 10, 18))), processor)
    examples = classification_examples(scan, config, np.random.default_rng(2), num_negatives=1, jitter_fraction=0.0)
    assert len(examples) == 3
    first, second, negative = examples
    assert first["lesion_mask"].shape == (1, 16, 16, 16)
    assert first["lesion_mask"].sum() == 27 and second["lesion_mask"].sum() == 27
    assert negative["lesion_mask"].sum() > 0  # an organ sphere stands in for a lesion
    assert negative["labels"]["lesion_type"] == config.classification_tasks["lesion_type"].index("none")


def test_report_example_tokenizes_the_report_text(processor, config):
    sample = make_sample()
    tokenizer = train_report_tokenizer([sample.report_text] * 4, vocab_size=300, min_frequency=1)
    example = report_example(to_model_grid(sample, processor, with_labels=False), config, tokenizer)
    assert example["pixel_values"].shape == (1, 16, 16, 16)
    assert example["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example["labels"], skip_special_tokens=True) == sample.report_text


def test_unknown_stage_and_missing_tokenizer_are_named(processor, config):
    scan = to_model_grid(make_sample(), processor)
    with pytest.raises(ValueError, match="unknown stage 'detect'"):
        examples_for_stage("detect", scan, config, np.random.default_rng(0))
    with pytest.raises(ValueError, match="tokenizer"):
        examples_for_stage("report", scan, config, np.random.default_rng(0))


def test_collate_stacks_arrays_label_dicts_and_pads_tokens():
    examples = [
        {"pixel_values": np.zeros((1, 4, 4, 4), np.float32), "labels": {"a": 1, "b": -100}, "epoch": 0, "row": 3},
        {"pixel_values": np.ones((1, 4, 4, 4), np.float32), "labels": {"a": 0, "b": 2}, "epoch": 0, "row": 5},
    ]
    batch = collate_examples(examples)
    assert batch["pixel_values"].shape == (2, 1, 4, 4, 4)
    assert batch["labels"]["a"].tolist() == [1, 0] and batch["labels"]["b"].tolist() == [-100, 2]
    assert batch["row"] == [3, 5]
    tokens = collate_examples([{"labels": np.array([5, 6, 2])}, {"labels": np.array([7, 2])}])
    assert tokens["labels"].tolist() == [[5, 6, 2], [7, 2, -100]]


def _stream(samples, **kwargs):
    def make(sample, rng):
        return [{"value": np.array(rng.random()), "tag": np.array(int(sample.seed))} for _ in range(2)]

    return CorpusPatchStream(lambda epoch: samples, make, **kwargs)


def test_stream_is_deterministic_covers_every_row_and_resumes(processor):
    samples = [make_sample() for _ in range(5)]
    for i, sample in enumerate(samples):
        sample.seed = i
    first = list(_stream(samples, seed=3, shuffle_buffer=4, epochs=2))
    again = list(_stream(samples, seed=3, shuffle_buffer=4, epochs=2))
    assert [float(e["value"]) for e in first] == [float(e["value"]) for e in again]
    assert len(first) == 2 * 5 * 2
    assert sorted((e["epoch"], e["row"]) for e in first) == sorted((e, r) for e in range(2) for r in range(5) for _ in range(2))
    resumed = list(_stream(samples, seed=3, shuffle_buffer=4, epochs=2, start=(1, 3)))
    assert sorted((e["epoch"], e["row"]) for e in resumed) == [(1, 3), (1, 3), (1, 4), (1, 4)]
    # row r of epoch e draws the same patches whether or not the run was resumed
    by_position = {(e["epoch"], e["row"], float(e["value"])) for e in first}
    assert {(e["epoch"], e["row"], float(e["value"])) for e in resumed} <= by_position


def test_empty_split_is_an_error():
    with pytest.raises(ValueError, match="no training examples"):
        list(_stream([], epochs=1))
