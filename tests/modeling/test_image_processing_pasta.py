"""PastaImageProcessor on synthetic volumes: geometry round trips, intensities, errors, sliding window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pasta_testing import sphere_phantom, tiny_config

from modeling_pasta.image_io import ImageReadError, Volume, save_nifti
from modeling_pasta.image_processing_pasta import PastaImageProcessor, segmentation_targets
from modeling_pasta.modeling_pasta import PastaForSegmentation
from modeling_pasta.organs import TOTALSEGMENTATOR_TOTAL, name_to_id

IDS = name_to_id(TOTALSEGMENTATOR_TOTAL)

#: Voxel -> RAS+ affines of a 4 mm grid in three orientations (the axis codes NIfTI would report).
AFFINES = {
    "RAS": np.diag([4.0, 4.0, 4.0, 1.0]),
    "LPS": np.array([[-4.0, 0, 0, 90.0], [0, -4.0, 0, 60.0], [0, 0, 4.0, -30.0], [0, 0, 0, 1]]),
    "PIL (permuted)": np.array([[0, 0, -4.0, 10.0], [-4.0, 0, 0, 5.0], [0, -4.0, 0, 7.0], [0, 0, 0, 1]]),
}


def _labels(shape=(20, 18, 16)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 6, size=shape).astype(np.uint8)


@pytest.mark.parametrize("orientation", sorted(AFFINES))
def test_label_round_trip_is_exact_in_any_orientation(orientation):
    processor = PastaImageProcessor(target_spacing_mm=(2.0, 2.0, 2.0))
    labels = _labels()
    affine = AFFINES[orientation]
    inputs = processor((labels.astype(np.int16), affine))
    geometry = inputs["geometry"][0]
    assert inputs["pixel_values"].shape == (1, 1, *geometry.model_shape)
    assert geometry.model_spacing_mm == pytest.approx((2.0, 2.0, 2.0))
    model_grid = processor.resample_like((labels, affine), geometry, is_label=True)
    back = processor.postprocess_segmentation(model_grid, geometry)
    assert back.shape == labels.shape and np.array_equal(back, labels)
    # predict_segmentation's batched (1, x, y, z) output is accepted as is
    assert np.array_equal(processor.postprocess_segmentation(model_grid[None], geometry), labels)
    # the model grid is RAS+: its affine has a positive diagonal
    assert np.all(np.diag(geometry.model_affine)[:3] > 0)


def test_model_grid_keeps_world_positions():
    processor = PastaImageProcessor(target_spacing_mm=(2.0, 2.0, 2.0))
    ct, sphere = sphere_phantom()
    affine = AFFINES["LPS"]
    geometry = processor((ct, affine))["geometry"][0]
    lesion = processor.resample_like((sphere.astype(np.uint8), affine), geometry, is_label=True)
    center_in = affine @ np.array([*np.argwhere(sphere).mean(axis=0), 1.0])
    center_model = geometry.model_affine @ np.array([*np.argwhere(lesion).mean(axis=0), 1.0])
    np.testing.assert_allclose(center_model[:3], center_in[:3], atol=1.0)


def test_intensity_schemes():
    hu = np.array([[[-2000, -1000, -200, 0, 200, 1000, 3000]]], dtype=np.int16).repeat(2, axis=0)
    pasta_hu = PastaImageProcessor(intensity_scheme="pasta_hu").normalize_ct(hu)[0, 0]
    np.testing.assert_allclose(pasta_hu, [0.0, 0.0, 0.2, 0.55, 0.9, 1.0, 1.0], atol=1e-6)

    rng = np.random.default_rng(0)
    values = rng.normal(40, 30, size=(30, 30, 30)).astype(np.float32)
    values[0, 0, :5] = 5000  # outliers beyond the 99.5th percentile
    processor = PastaImageProcessor(intensity_scheme="zscore")
    normalized = processor.normalize_ct(values)
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    np.testing.assert_allclose(normalized, (clipped - clipped.mean()) / clipped.std(), rtol=1e-4, atol=1e-4)
    assert normalized.mean() == pytest.approx(0.0, abs=1e-5) and normalized.std() == pytest.approx(1.0, abs=1e-4)


def test_pet_channel_is_resampled_onto_the_ct_grid():
    processor = PastaImageProcessor(target_spacing_mm=(2.0, 2.0, 2.0), in_channels=2)
    ct, sphere = sphere_phantom()
    pet = np.where(sphere, 8.0, 1.0).astype(np.float32)
    # the PET lives on its own grid: half the resolution, other voxel order
    pet_affine = AFFINES["RAS"].copy()
    pet_affine[:3, :3] *= 2
    pet_coarse = pet[::2, ::2, ::2]
    inputs = processor((ct, AFFINES["RAS"]), pet=(pet_coarse, pet_affine))
    pixel_values = inputs["pixel_values"][0]
    assert pixel_values.shape[0] == 2
    hot = pixel_values[1] > pixel_values[1].mean() + pixel_values[1].std()
    bright = pixel_values[0] > pixel_values[0].mean() + pixel_values[0].std()
    overlap = (hot & bright).sum() / bright.sum()
    assert overlap > 0.6
    with pytest.raises(ValueError, match="expects CT \\+ PET"):
        processor((ct, AFFINES["RAS"]))
    with pytest.raises(ValueError, match="CT only"):
        PastaImageProcessor()((ct, AFFINES["RAS"]), pet=(pet, AFFINES["RAS"]))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((16, 16), np.int16), "2D array"),
        (np.zeros((16, 16, 16, 3), np.int16), "4D array"),
        (np.where(np.eye(16)[None].repeat(4, 0) > 0, np.nan, 0.0), "NaN or infinite"),
    ],
    ids=["2D", "4D", "NaN"],
)
def test_bad_arrays_are_rejected_with_a_clear_message(array, message):
    with pytest.raises(ImageReadError, match=message):
        PastaImageProcessor()((array, np.eye(4)))


def test_other_input_errors(tmp_path):
    processor = PastaImageProcessor()
    with pytest.raises(ImageReadError, match="no geometry"):
        processor(np.zeros((8, 8, 8)))
    with pytest.raises(ImageReadError, match="no such file"):
        processor(tmp_path / "missing.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    save_nifti(np.zeros((32, 32, 32), np.int16), np.eye(4), tmp_path / "full.nii.gz")
    truncated.write_bytes((tmp_path / "full.nii.gz").read_bytes()[:200])
    with pytest.raises(ImageReadError, match="truncated.nii.gz"):
        processor(truncated)
    with pytest.raises(ValueError, match="cannot be batched"):
        processor([(np.zeros((8, 8, 8)), np.eye(4)), (np.zeros((8, 8, 10)), np.eye(4))])


def test_save_and_load(tmp_path):
    processor = PastaImageProcessor.from_model_config(tiny_config(), sliding_window_overlap=0.25)
    processor.save_pretrained(tmp_path)
    loaded = PastaImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert (
        loaded.target_spacing_mm == [4.0, 4.0, 4.0] and loaded.size_divisor == 4 and loaded.patch_size == [16, 16, 16]
    )


def test_crop_pads_with_zeros_outside_the_volume():
    processor = PastaImageProcessor(patch_size=(16, 16, 16))
    volume = torch.arange(20 * 20 * 20, dtype=torch.float32).view(1, 1, 20, 20, 20) + 1
    crop = processor.crop(volume, center=(2, 10, 18))
    assert crop.shape == (1, 1, 16, 16, 16)
    # x starts at -6: the first 6 planes are padding; z ends at 26: the last 6 planes are padding
    assert torch.all(crop[:, :, :6] == 0) and torch.all(crop[:, :, :, :, 10:] == 0)
    assert torch.equal(crop[0, 0, 6:, :, :10], volume[0, 0, 0:10, 2:18, 10:20])


def test_segmentation_targets_merge_organs_and_put_lesions_on_top():
    config = tiny_config()
    organ_map = np.array(
        [[[0, IDS["kidney_left"], IDS["kidney_right"], IDS["vertebrae_L3"], IDS["vertebrae_T8"], IDS["femur_left"]]]]
    )
    lesion_mask = np.array([[[0, 0, 3, 0, 0, 0]]])
    targets = segmentation_targets(organ_map, lesion_mask, config)
    expected = [
        0,
        config.label2id["kidney_left"],
        config.lesion_label_id,
        config.label2id["vertebrae"],
        config.label2id["vertebrae"],
        0,
    ]
    assert targets.dtype == np.uint8 and targets[0, 0].tolist() == expected


@pytest.mark.parametrize(("overlap", "batch"), [(0.5, 1), (0.25, 3), (0.0, 2)])
def test_streamed_sliding_window_equals_monai(overlap, batch):
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    config = tiny_config()
    model = PastaForSegmentation(config).eval()
    processor = PastaImageProcessor.from_model_config(
        config, sliding_window_overlap=overlap, sliding_window_batch_size=batch
    )
    volume = torch.randn(2, 1, 37, 22, 30)
    labels = processor.predict_segmentation(model, volume)
    with torch.no_grad():
        reference = sliding_window_inference(
            volume, (16, 16, 16), batch, lambda x: model(x).logits, overlap=overlap, mode="gaussian"
        ).argmax(1)
    assert labels.shape == (2, 37, 22, 30) and labels.dtype == torch.uint8
    assert torch.equal(labels.long(), reference)  # same windows, order and weights: the same sums


def test_sliding_window_on_a_single_window_and_a_smaller_volume():
    torch.manual_seed(0)
    config = tiny_config()
    model = PastaForSegmentation(config).eval()
    processor = PastaImageProcessor.from_model_config(config)
    patch = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        direct = model(patch).logits.argmax(1)
    assert torch.equal(processor.predict_segmentation(model, patch).long(), direct)
    small = processor.predict_segmentation(model, torch.randn(1, 1, 9, 16, 13))  # padded to the window, cropped back
    assert small.shape == (1, 9, 16, 13)


def test_volume_input_and_nifti_file_agree(tmp_path):
    processor = PastaImageProcessor(target_spacing_mm=(2.0, 2.0, 2.0))
    ct, _ = sphere_phantom()
    path = save_nifti(ct, AFFINES["LPS"], tmp_path / "ct.nii.gz")
    from_file = processor(path)
    from_volume = processor(Volume(ct, AFFINES["LPS"], "phantom"))
    assert torch.equal(from_file["pixel_values"], from_volume["pixel_values"])
    np.testing.assert_allclose(from_file["geometry"][0].input_affine, AFFINES["LPS"])
