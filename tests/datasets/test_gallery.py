"""The lesion gallery renders a PNG with one panel per requested type."""

from __future__ import annotations

import numpy as np
import pytest

from datasets_pasta.gallery import render_gallery
from datasets_pasta.views import radiological_axial


def test_radiological_axial_puts_patient_right_on_the_left_and_anterior_up():
    volume = np.zeros((4, 3, 2))
    volume[3, 0, 1] = 1.0  # largest x (patient's right end in RAS), most posterior, slice 1
    image = radiological_axial(volume, 1)
    assert image.shape == (3, 4)
    assert image[2, 0] == 1.0  # bottom row (posterior), left column (patient's right)


def test_gallery_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = render_gallery(tmp_path / "g.png", lesion_types=["kidney_stone", "lung_cancer"], spacing_mm=5.0, seed=1)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
