"""Healthy bases: loading real scans, clear errors for bad input, resampling and augmentation."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from datasets_pasta.bases import (
    BaseError,
    HealthyBase,
    augment_anatomy,
    estimate_phase,
    find_base_files,
    load_base,
    load_base_dir,
    resample_base,
)
from modeling_pasta.image_io import ImageReadError
from modeling_pasta.organs import TOTALSEGMENTATOR_TOTAL, name_to_id

IDS = name_to_id(TOTALSEGMENTATOR_TOTAL)


def _write(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _tiny_pair(tmp_path: Path, affine=None, shape=(16, 16, 16)) -> tuple[Path, Path]:
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    ct = np.full(shape, -100, np.int16)
    organs = np.zeros(shape, np.uint8)
    organs[4:12, 4:12, 4:12] = IDS["liver"]
    ct[organs > 0] = 55
    return _write(tmp_path / "case.nii.gz", ct, affine), _write(tmp_path / "case_organs.nii.gz", organs, affine)


def test_real_base_loads_in_ras(real_ct_dir):
    bases = {b.base_id: b for b in load_base_dir(real_ct_dir)}
    assert set(bases) == {"abdomen_ct", "abdomen_ct_small"}  # chest_cta has no label map
    base = bases["abdomen_ct"]
    assert nib.aff2axcodes(base.affine) == ("R", "A", "S")
    assert base.ct_hu.dtype == np.int16 and base.organ_map.dtype == np.uint8
    assert base.phase == "plain"  # aorta ~42 HU in this scan
    assert 5 < base.noise_hu < 40
    assert base.has_organ("liver") and not base.has_organ("esophagus")


def test_missing_organ_error_names_it_and_the_available_ones(real_ct_dir):
    base = load_base_dir(real_ct_dir)[0]
    with pytest.raises(BaseError, match=r"no 'esophagus'.*organs available: .*liver"):
        base.require_organ("esophagus")


def test_reorientation_keeps_overlay(tmp_path):
    # An LPS-stored pair must come out in RAS with the same world position for every labelled voxel.
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    lps[:3, 3] = [30.0, 30.0, 0.0]
    ct_path, lab_path = _tiny_pair(tmp_path, affine=lps)
    base = load_base(ct_path, lab_path)
    assert nib.aff2axcodes(base.affine) == ("R", "A", "S")
    original = nib.load(str(lab_path))
    world_in = np.argwhere(np.asarray(original.dataobj) > 0) @ lps[:3, :3].T + lps[:3, 3]
    world_out = np.argwhere(base.organ_map > 0) @ base.affine[:3, :3].T + base.affine[:3, 3]
    assert np.allclose(np.sort(world_in, axis=0), np.sort(world_out, axis=0))
    assert (base.ct_hu[base.organ_map > 0] == 55).all()


def test_shape_mismatch_is_named(tmp_path):
    ct_path, _ = _tiny_pair(tmp_path)
    bad = _write(tmp_path / "bad_organs.nii.gz", np.zeros((16, 16, 15), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(BaseError, match=r"bad_organs.*shape \(16, 16, 15\).*\(16, 16, 16\)"):
        load_base(ct_path, bad)


def test_affine_mismatch_is_named(tmp_path):
    ct_path, _ = _tiny_pair(tmp_path)
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])
    bad = _write(tmp_path / "flip_organs.nii.gz", np.zeros((16, 16, 16), np.uint8), flipped)
    with pytest.raises(BaseError, match=r"flip_organs.*affine does not match.*LAS vs RAS"):
        load_base(ct_path, bad)


def test_corrupt_and_truncated_nifti(tmp_path):
    ct_path, lab_path = _tiny_pair(tmp_path)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a nifti file at all" * 10)
    with pytest.raises(ImageReadError, match="garbage.nii.gz: not a readable NIfTI"):
        load_base(garbage, lab_path)
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(ct_path.read_bytes()[: len(ct_path.read_bytes()) // 2])
    with pytest.raises(ImageReadError, match="trunc.nii.gz"):
        load_base(truncated, lab_path)
    raw = tmp_path / "raw.nii"
    raw.write_bytes(gzip.decompress(ct_path.read_bytes())[:-500])
    with pytest.raises(ImageReadError, match="raw.nii"):
        load_base(raw, lab_path)


def test_nan_2d_and_4d_inputs(tmp_path):
    _, lab_path = _tiny_pair(tmp_path)
    nan_ct = np.zeros((16, 16, 16), np.float32)
    nan_ct[3, 3, 3] = np.nan
    path = _write(tmp_path / "nan.nii.gz", nan_ct, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ImageReadError, match=r"nan.nii.gz: 1 voxel\(s\) are NaN"):
        load_base(path, lab_path)
    flat = _write(tmp_path / "flat.nii.gz", np.zeros((16, 16), np.int16), np.eye(4))
    with pytest.raises(ImageReadError, match="flat.nii.gz: expected a 3D volume, got a 2D"):
        load_base(flat, lab_path)
    four = _write(tmp_path / "four.nii.gz", np.zeros((16, 16, 16, 3), np.int16), np.eye(4))
    with pytest.raises(ImageReadError, match="four.nii.gz: expected a 3D volume, got a 4D"):
        load_base(four, lab_path)


def test_unknown_label_ids_and_custom_label_json(tmp_path):
    ct_path, lab_path = _tiny_pair(tmp_path)
    organs = np.asarray(nib.load(str(lab_path)).dataobj).copy()
    organs[0, 0, 0] = 200
    _write(lab_path, organs, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(BaseError, match=r"label ids \[200\] are not in the label description"):
        load_base(ct_path, lab_path)
    (tmp_path / "organ_labels.json").write_text(json.dumps({"5": "liver", "200": "tumor_bed"}))
    (base,) = load_base_dir(tmp_path)
    assert base.label_names[200] == "tumor_bed" and base.has_organ("liver")


def test_folder_without_pairs(tmp_path):
    _write(tmp_path / "lonely.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    with pytest.raises(BaseError, match="no CT with a label map"):
        find_base_files(tmp_path)
    with pytest.raises(BaseError, match="not a folder"):
        find_base_files(tmp_path / "missing")


def test_resample_changes_spacing_and_keeps_world_box(tmp_path):
    base = load_base(*_tiny_pair(tmp_path))
    fine = resample_base(base, 1.0)
    assert fine.spacing_mm == pytest.approx((1.0, 1.0, 1.0))
    assert fine.ct_hu.dtype == np.int16 and fine.organ_map.dtype == np.uint8
    # The liver block (8 voxels of 2 mm = 16 mm) stays ~16 mm wide.
    extent = np.ptp(np.argwhere(fine.organ_map == IDS["liver"]), axis=0) + 1
    assert np.all(np.abs(extent - 16) <= 2)
    assert set(np.unique(fine.organ_map)) <= {0, IDS["liver"]}


def test_augmentation_moves_ct_and_labels_together(tmp_path):
    base = load_base(*_tiny_pair(tmp_path, shape=(24, 24, 24)))
    rng = np.random.default_rng(3)
    out = augment_anatomy(base, rng, elastic_mm=3.0)
    assert out.ct_hu.shape == base.ct_hu.shape and np.array_equal(out.affine, base.affine)
    assert not np.array_equal(out.organ_map, base.organ_map)
    # Labels still overlay the CT: labelled voxels carry organ HU, others background HU (up to edge blur).
    agree = np.mean(np.where(out.organ_map > 0, out.ct_hu > 0, out.ct_hu < 0))
    assert agree > 0.97
    again = augment_anatomy(base, np.random.default_rng(3), elastic_mm=3.0)
    assert np.array_equal(again.ct_hu, out.ct_hu)
    identity = augment_anatomy(base, rng, rotate_deg=0, scale=0, elastic_mm=0)
    assert np.array_equal(identity.organ_map, base.organ_map) and np.array_equal(identity.ct_hu, base.ct_hu)


def test_phase_estimate_from_vessels():
    organs = np.zeros((10, 10, 10), np.uint8)
    organs[2:4, 2:4, :] = IDS["aorta"]
    ct = np.zeros((10, 10, 10), np.int16)
    for aorta_hu, phase in [(40, "plain"), (130, "venous"), (300, "arterial")]:
        ct[organs > 0] = aorta_hu
        assert estimate_phase(ct, organs, TOTALSEGMENTATOR_TOTAL) == phase


def test_base_validates_phase_and_shapes():
    with pytest.raises(BaseError, match="phase"):
        HealthyBase(np.zeros((4, 4, 4), np.int16), np.zeros((4, 4, 4), np.uint8), np.eye(4), phase="late")
    with pytest.raises(BaseError, match="differ"):
        HealthyBase(np.zeros((4, 4, 4), np.int16), np.zeros((4, 4, 5), np.uint8), np.eye(4))
