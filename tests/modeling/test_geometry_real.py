"""Geometry on the real CTs of ../shared/data/ct: round trips through the model grid, DICOM reading and errors."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from modeling_pasta.image_io import (
    ImageReadError,
    load_dicom_series,
    load_image,
    load_nifti,
    resample_to_grid,
    save_nifti,
    to_canonical,
)
from modeling_pasta.image_processing_pasta import PastaImageProcessor
from modeling_pasta.organs import TOTALSEGMENTATOR_TOTAL, name_to_id

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
IDS = name_to_id(TOTALSEGMENTATOR_TOTAL)


def _round_trip(ct_path: Path | str, labels_path: Path | str, spacing) -> tuple[np.ndarray, np.ndarray]:
    """The label map pushed onto the model grid of its CT and back; returns (back, the label map on the CT grid)."""
    processor = PastaImageProcessor(target_spacing_mm=spacing)
    geometry = processor(ct_path)["geometry"][0]
    model_grid = processor.resample_like(labels_path, geometry, is_label=True)
    back = processor.postprocess_segmentation(model_grid, geometry)
    ct = load_image(ct_path)
    labels = load_nifti(labels_path)
    reference = resample_to_grid(labels.array, labels.affine, ct.affine, ct.array.shape, is_label=True)
    return back, reference


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def chest_labels(real_ct_dir, tmp_path_factory) -> Path:
    """A label map for the LPS chest CTA (no organ labels ship with it): air / soft tissue / dense tissue."""
    ct = load_nifti(real_ct_dir / "chest_cta.nii.gz")
    labels = np.digitize(ct.array, [-500, 150]).astype(np.uint8)
    return save_nifti(labels, ct.affine, tmp_path_factory.mktemp("chest") / "chest_cta_classes.nii.gz")


def test_round_trip_ras_nifti(real_ct_dir):
    assert "".join(nib.aff2axcodes(nib.load(real_ct_dir / "abdomen_ct.nii.gz").affine)) == "RAS"
    back, reference = _round_trip(
        real_ct_dir / "abdomen_ct.nii.gz", real_ct_dir / "abdomen_ct_organs.nii.gz", (1.5, 1.5, 1.5)
    )
    assert np.array_equal(back, reference)


def test_round_trip_lps_nifti(real_ct_dir, chest_labels):
    assert "".join(nib.aff2axcodes(nib.load(real_ct_dir / "chest_cta.nii.gz").affine)) == "LPS"
    back, reference = _round_trip(real_ct_dir / "chest_cta.nii.gz", chest_labels, (0.75, 0.75, 0.75))
    assert np.array_equal(back, reference)


def test_round_trip_las_nifti_and_dicom_series(real_ct_dir):
    labels_path = real_ct_dir / "abdomen_dicom_organs.nii.gz"
    assert "".join(nib.aff2axcodes(nib.load(labels_path).affine)) == "LAS"
    # a model grid that halves the 2 mm slice distance: exact both ways
    spacing = (0.9765625, 0.9765625, 1.0)
    back, reference = _round_trip(real_ct_dir / "abdomen_dicom", labels_path, spacing)
    assert np.array_equal(back, reference)
    # at the shipped 1.5 mm the in-plane resolution is lost, organs still overlay
    back, reference = _round_trip(real_ct_dir / "abdomen_dicom", labels_path, (1.5, 1.5, 1.5))
    assert (back == reference).mean() > 0.99
    for organ in ("liver", "spleen", "stomach", "aorta"):
        assert _dice(back == IDS[organ], reference == IDS[organ]) > 0.95, organ


def test_dicom_affine_matches_its_nifti_label_map(real_ct_dir):
    dicom = load_dicom_series(real_ct_dir / "abdomen_dicom")
    labels = load_nifti(real_ct_dir / "abdomen_dicom_organs.nii.gz")
    assert dicom.array.shape == labels.array.shape == (512, 512, 20)
    assert dicom.array.dtype == np.int16 and dicom.array.min() == -1024  # RescaleIntercept -1024 applied
    _, dicom_affine, _ = to_canonical(dicom.array, dicom.affine)
    _, labels_affine, _ = to_canonical(labels.array, labels.affine)
    np.testing.assert_allclose(dicom_affine, labels_affine, atol=1e-3)
    # slices are sorted inferior to superior and rows run posterior: DICOM voxel (i, j, k) is the
    # label map's voxel (i, 511 - j, k)
    np.testing.assert_allclose(dicom.affine @ [0, 0, 0, 1], labels.affine @ [0, 511, 0, 1], atol=1e-3)
    np.testing.assert_allclose(dicom.affine @ [100, 30, 7, 1], labels.affine @ [100, 481, 7, 1], atol=1e-3)


@pytest.mark.parametrize(
    ("ct", "labels", "organ_hu"),
    [
        (
            "abdomen_ct.nii.gz",
            "abdomen_ct_organs.nii.gz",
            {"liver": (20, 160), "kidney_left": (0, 250), "lung_lower_lobe_right": (-1000, -500)},
        ),
        ("abdomen_dicom", "abdomen_dicom_organs.nii.gz", {"liver": (20, 160), "spleen": (20, 200)}),
    ],
)
def test_written_mask_overlays_its_ct(real_ct_dir, tmp_path, ct, labels, organ_hu):
    processor = PastaImageProcessor(target_spacing_mm=(1.5, 1.5, 1.5))
    geometry = processor(real_ct_dir / ct)["geometry"][0]
    mask = processor.postprocess_segmentation(
        processor.resample_like(real_ct_dir / labels, geometry, is_label=True), geometry
    )
    written = save_nifti(mask, geometry.input_affine, tmp_path / "mask.nii.gz")
    image = load_image(real_ct_dir / ct)
    reread = nib.load(written)
    np.testing.assert_allclose(reread.affine, image.affine, atol=1e-4)
    assert reread.shape == image.array.shape
    on_ct = np.asarray(reread.dataobj)
    for organ, (low, high) in organ_hu.items():
        mean_hu = float(image.array[on_ct == IDS[organ]].mean())
        assert low < mean_hu < high, (organ, mean_hu)


# --------------------------------------------------------------------------------------------
# DICOM errors: each names the problem
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def dicom_copy(real_ct_dir, tmp_path) -> Path:
    folder = tmp_path / "series"
    shutil.copytree(real_ct_dir / "abdomen_dicom", folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def _sorted_files(folder: Path) -> list[Path]:
    return sorted(
        folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
    )


def test_dicom_single_file_folder_and_zip_read_the_same_series(dicom_copy, tmp_path):
    folder_volume = load_image(dicom_copy)
    file_volume = load_image(next(dicom_copy.iterdir()))
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in dicom_copy.iterdir():
            handle.write(path, f"study/series/{path.name}")
    zip_volume = load_image(archive)
    for other in (file_volume, zip_volume):
        assert np.array_equal(other.array, folder_volume.array)
        np.testing.assert_allclose(other.affine, folder_volume.affine)
    assert zip_volume.source == str(archive)


def test_dicom_missing_slice(dicom_copy):
    _sorted_files(dicom_copy)[7].unlink()
    with pytest.raises(ImageReadError, match=r"missing slice\(s\): a gap of 4.00 mm .* \(slice distance 2.00 mm\)"):
        load_dicom_series(dicom_copy)


def test_dicom_two_series(dicom_copy):
    for path in list(dicom_copy.iterdir())[:5]:
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = "1.2.3.4"
        dataset.save_as(dicom_copy / f"other_{path.name}")
    with pytest.raises(ImageReadError, match="holds 2 DICOM series"):
        load_dicom_series(dicom_copy)
    volume = load_dicom_series(dicom_copy, series_instance_uid="")
    assert volume.array.shape == (512, 512, 20)


def test_dicom_inconsistent_orientation_and_size(dicom_copy):
    path = _sorted_files(dicom_copy)[3]
    dataset = pydicom.dcmread(path)
    dataset.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    dataset.save_as(path)
    with pytest.raises(ImageReadError, match="inconsistent ImageOrientationPatient"):
        load_dicom_series(dicom_copy)


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_dicom_truncated_file(dicom_copy):
    path = _sorted_files(dicom_copy)[10]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError, match=f"{path.name}.*truncated or corrupt"):
        load_dicom_series(dicom_copy)


def test_dicom_duplicate_and_single_slice(dicom_copy, tmp_path):
    first = _sorted_files(dicom_copy)[0]
    shutil.copy(first, dicom_copy / "copy_of_first.dcm")
    with pytest.raises(ImageReadError, match="two slices at the same position"):
        load_dicom_series(dicom_copy)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(first, lone / first.name)
    with pytest.raises(ImageReadError, match="only 1 DICOM slice"):
        load_image(lone)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(ImageReadError, match="no DICOM files found"):
        load_image(empty)


def test_zip_with_path_traversal_is_refused(dicom_copy, tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("../../outside.txt", "escape")
        for path in dicom_copy.iterdir():
            handle.write(path, path.name)
    with pytest.raises(ImageReadError, match="unsafe path '../../outside.txt'"):
        load_image(archive)
    assert not (tmp_path.parent / "outside.txt").exists()
