"""check_ct: CT in HU passes; label maps, MRI-like and PET-like volumes are refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_pasta.image_io import NotCTError, Volume, check_ct


def _ct(shape=(20, 20, 20)) -> np.ndarray:
    ct = np.full(shape, -1000, dtype=np.int16)  # air around the body
    ct[4:16, 4:16, :] = 40  # soft tissue
    ct[9:11, 9:11, :] = 700  # bone
    return ct


def test_a_ct_in_hu_passes():
    check_ct(Volume(_ct(), np.eye(4), "ct.nii.gz"))
    check_ct(Volume(_ct().astype(np.float32), np.eye(4), "ct.nii.gz"))


def test_a_label_map_is_refused_as_a_segmentation():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[5:10] = 5
    labels[10:15] = 117
    with pytest.raises(NotCTError, match=r"seg\.nii\.gz: looks like a label map, not a CT \(3 distinct"):
        check_ct(Volume(labels, np.eye(4), "seg.nii.gz"))


@pytest.mark.parametrize("kind", ["mri", "pet"])
def test_volumes_without_air_in_hu_are_refused(kind):
    rng = np.random.default_rng(0)
    if kind == "mri":
        array = rng.integers(0, 900, size=(20, 20, 20)).astype(np.int16)  # signal, not HU
    else:
        array = rng.gamma(2.0, 1.0, size=(20, 20, 20)).astype(np.float32)  # SUV
    with pytest.raises(NotCTError, match=r"scan: does not look like a CT in Hounsfield units: 0\.00 % of voxels"):
        check_ct(Volume(array, np.eye(4), "scan"))


def test_values_far_outside_the_hounsfield_scale_are_refused():
    ct = _ct().astype(np.float32)
    ct[0, 0, 0] = 1e6
    with pytest.raises(NotCTError, match="outside the Hounsfield scale"):
        check_ct(Volume(ct, np.eye(4), "scaled.nii"))
