"""Orthogonal views: radiological orientation whatever the input orientation, overlays where the mask is,
pixels stretched to the voxel spacing."""

from __future__ import annotations

import numpy as np
import pytest

from datasets_pasta.views import LESION_RGB, CaseViews, radiological_slice


def _volume(shape=(30, 20, 10)):
    ct = np.full(shape, 40, dtype=np.int16)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:6, 14:18, 3:7] = 1  # near the patient's right (low x in RAS), anterior (high y)
    return ct, mask


def test_lps_and_ras_inputs_render_the_same_views():
    ct, mask = _volume()
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [ct.shape[0] - 1, ct.shape[1] - 1]
    lps_views = CaseViews.from_arrays(ct[::-1, ::-1], ras @ flip, mask[::-1, ::-1])
    ras_views = CaseViews.from_arrays(ct, ras, mask)
    for plane, index in (("axial", 5), ("coronal", 15), ("sagittal", 3)):
        assert np.array_equal(lps_views.render(plane, index), ras_views.render(plane, index))


def test_the_axial_view_puts_the_patient_right_on_the_left_and_anterior_up():
    ct, mask = _volume()
    views = CaseViews.from_arrays(ct, np.diag([1.0, 1.0, 1.0, 1.0]), mask)
    image = views.render("axial", 5, max_pixels=30, organs=False)  # 30 x 20 mm: 30 px wide, 20 px high
    assert image.shape == (20, 30, 3)
    red = np.all(image == LESION_RGB.astype(np.uint8), axis=-1) | (image[..., 0] > image[..., 1] + 50)
    rows, cols = np.nonzero(red)
    assert cols.min() >= 30 - 6 and rows.max() < 20 - 14  # right edge of the image (patient's right), top
    assert views.lesion_center() == (4, 16, 4)  # rounded centroid of x 2..5, y 14..17, z 3..6


def test_pixels_follow_the_spacing_and_slices_are_clipped():
    ct, _ = _volume()
    views = CaseViews.from_arrays(ct, np.diag([1.0, 1.0, 4.0, 1.0]))
    coronal = views.render("coronal", 99, max_pixels=60)  # index clipped to the last slice
    assert coronal.shape[:2] == (int(round(40 * 60 / 40)), int(round(30 * 60 / 40)))
    with pytest.raises(ValueError, match="unknown plane"):
        radiological_slice(ct, "oblique", 0)
    with pytest.raises(ValueError, match="does not match"):
        CaseViews.from_arrays(ct, np.eye(4), np.zeros((2, 2, 2)))
