"""``pasta predict`` on the real CTs: outputs in the input's geometry (NIfTI RAS / LPS, DICOM SEG),
a schema-valid report, batch resume, and refusal of inputs that are not CT."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile

import nibabel as nib
import numpy as np
import pytest

from datasets_pasta.cli import main
from datasets_pasta.predict import find_cases, predict
from modeling_pasta.image_io import ImageReadError, NotCTError, load_image
from modeling_pasta.report import validate_report

#: Lesion Dice the shipped checkpoint reaches at least on the bundled example (measured: see the model card).
MIN_EXAMPLE_DICE = 0.02



def _lps_copy(path, out):
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)[::-1, ::-1]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [data.shape[0] - 1, data.shape[1] - 1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), image.affine @ flip), out)
    assert "".join(nib.aff2axcodes(image.affine @ flip)) == "LPS"
    return out


def _check_geometry(case_folder, ct_path):
    """The masks share the CT's grid and affine."""
    ct = nib.load(ct_path)
    lesion = nib.load(case_folder / "lesion_mask.nii.gz")
    for image in (lesion, nib.load(case_folder / "organ_map.nii.gz")):
        assert image.shape == ct.shape
        np.testing.assert_allclose(image.affine, ct.affine, atol=1e-4)
    return ct, lesion


def _check_overlay(case_folder, ct_path):
    """The masks share the CT's grid and affine, and lesion voxels sit on bright CT voxels."""
    ct, lesion = _check_geometry(case_folder, ct_path)
    mask = np.asarray(lesion.dataobj) > 0
    hu = np.asarray(ct.dataobj)
    assert mask.any()
    # the segmenter marks bone-bright voxels: on the input grid they must be bright (a flipped or
    # shifted mask would land on soft tissue and air)
    assert np.median(hu[mask]) > 100 > 50 > np.median(hu[~mask])
    assert (hu[mask] > 100).mean() > 0.5
    return mask


@pytest.mark.real_data
@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_nifti_outputs_overlay_the_input_and_the_report_validates(tiny_pipeline_dir, real_ct_dir, tmp_path, orientation):
    source = real_ct_dir / "abdomen_ct_small.nii.gz"
    if orientation == "LPS":
        source = _lps_copy(source, tmp_path / "abdomen_lps.nii.gz")
    (result,) = predict(source, tmp_path / "out", tiny_pipeline_dir, progress=False)
    folder = tmp_path / "out"
    assert result.folder == folder and not result.skipped and result.error is None
    mask = _check_overlay(folder, source)

    report = validate_report(json.loads((folder / "report.json").read_text()))
    with (folder / "lesions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(report.lesions) == len(result.lesions) == int(np.asarray(
        nib.load(folder / "lesion_mask.nii.gz").dataobj).max())
    assert set(rows[0]) >= {"type", "organ", "size_mm", "volume_ml", "mean_hu", "confidence"}
    voxel_ml = float(np.prod(nib.load(source).header.get_zooms()[:3])) / 1000
    assert sum(float(r["volume_ml"]) for r in rows) == pytest.approx(mask.sum() * voxel_ml, rel=0.02)
    assert (folder / "report.txt").read_text().strip()
    case = json.loads((folder / "case.json").read_text())
    assert case["orientation"] == orientation and case["lesions"] == len(rows)


@pytest.mark.real_data
def test_dicom_series_gives_nifti_and_dicom_seg_on_the_series_grid(tiny_pipeline_dir, real_ct_dir, tmp_path):
    import highdicom as hd
    import pydicom

    series = real_ct_dir / "abdomen_dicom"
    (result,) = predict(series, tmp_path / "out", tiny_pipeline_dir, progress=False)
    volume = load_image(series)
    lesion = nib.load(result.files["lesion_mask"])
    assert lesion.shape == volume.array.shape
    np.testing.assert_allclose(lesion.affine, volume.affine, atol=1e-4)
    labels = np.asarray(lesion.dataobj)
    # bone-bright voxels, blocky at the tiny model's 8 mm grid: clearly brighter than the rest
    assert volume.array[labels > 0].mean() > volume.array[labels == 0].mean() + 300

    seg = hd.seg.segread(result.files["lesions_seg"])
    assert seg.Modality == "SEG" and seg.NumberOfFrames > 0
    uids = [pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID for f in volume.dicom_files]
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    # segment k is lesion k: the DICOM SEG and the NIfTI mask hold the same voxels
    assert np.array_equal(frames.transpose(2, 1, 0), labels)
    organs = hd.seg.segread(result.files["organs_seg"])
    names = {d.SegmentLabel for d in organs.SegmentSequence}
    assert names <= set(json.loads((tmp_path / "out" / "organ_labels.json").read_text()).values())


@pytest.mark.real_data
def test_batch_skips_finished_cases_and_reports_bad_ones(tiny_pipeline_dir, real_ct_dir, real_data, tmp_path, caplog):
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(real_ct_dir / "abdomen_ct_small.nii.gz", batch / "case_a.nii.gz")
    with zipfile.ZipFile(batch / "case_b.zip", "w") as archive:
        archive.write(real_ct_dir / "abdomen_ct_small.nii.gz", "inner/ct.nii.gz")
    (batch / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    shutil.copy(real_data / "mr" / "abdomen_mr_small.nii.gz", batch / "mri.nii.gz")
    cases, is_batch = find_cases(batch)
    assert is_batch and [c.name for c in cases] == ["broken.nii.gz", "case_a.nii.gz", "case_b.zip", "mri.nii.gz"]

    out = tmp_path / "out"
    first = {r.name: r for r in predict(batch, out, tiny_pipeline_dir, progress=False)}
    assert first["case_a"].error is None and first["case_b"].error is None
    assert "broken.nii.gz" in first["broken"].error
    assert "Hounsfield" in first["mri"].error
    assert sorted(p.name for p in out.iterdir()) == ["case_a", "case_b"]  # no partial folder left behind
    a_mask = np.asarray(nib.load(out / "case_a" / "lesion_mask.nii.gz").dataobj)
    assert np.array_equal(a_mask, np.asarray(nib.load(out / "case_b" / "lesion_mask.nii.gz").dataobj))

    stamp = (out / "case_a" / "case.json").stat().st_mtime_ns
    second = {r.name: r for r in predict(batch, out, tiny_pipeline_dir, progress=False)}
    assert second["case_a"].skipped and second["case_b"].skipped
    assert (out / "case_a" / "case.json").stat().st_mtime_ns == stamp
    assert len(second["case_a"].lesions) == len(first["case_a"].lesions)
    assert sorted(p.name for p in out.iterdir()) == ["case_a", "case_b"]


@pytest.mark.real_data
def test_non_ct_inputs_are_refused_with_the_reason(tiny_pipeline_dir, real_ct_dir, real_data, tmp_path, caplog):
    with pytest.raises(NotCTError, match=r"abdomen_mr_small\.nii\.gz: does not look like a CT in Hounsfield"):
        predict(real_data / "mr" / "abdomen_mr_small.nii.gz", tmp_path / "mr", tiny_pipeline_dir, progress=False)
    with pytest.raises(NotCTError, match="looks like a label map"):
        predict(real_ct_dir / "abdomen_ct_small_organs.nii.gz", tmp_path / "seg", tiny_pipeline_dir, progress=False)
    assert not (tmp_path / "mr").exists() and not (tmp_path / "seg").exists()
    (result,) = predict(
        real_data / "mr" / "abdomen_mr_small.nii.gz", tmp_path / "mr", tiny_pipeline_dir, allow_non_ct=True, progress=False
    )
    assert result.error is None and (tmp_path / "mr" / "lesion_mask.nii.gz").is_file()
    assert "processing anyway" in caplog.text


def test_cli_help_and_one_line_errors(capsys, tmp_path, tiny_pipeline_dir):
    assert main(["predict", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--out", "--model", "--allow-non-ct", "--overwrite", "--device", "--no-progress"):
        assert option in text
    assert main(["predict", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o"), "--model", str(tiny_pipeline_dir)]) == 2
    assert "missing.nii.gz: no such file or folder" in capsys.readouterr().err
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    assert main(["predict", str(tmp_path / "bad.nii.gz"), "--out", str(tmp_path / "o"), "--model", str(tiny_pipeline_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pasta predict: error:") and "bad.nii.gz" in err and len(err.strip().splitlines()) == 1
    assert main(["predict", str(tmp_path / "bad.nii.gz"), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "none")]) == 2
    assert "no PASTA checkpoint" in capsys.readouterr().err


def test_empty_batch_folder_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(ImageReadError, match="no NIfTI file, zip or DICOM series"):
        find_cases(tmp_path)


@pytest.mark.slow
def test_the_shipped_checkpoint_runs_on_the_bundled_example(tmp_path):
    """The README's main command: the default model on the Space's example, end to end."""
    from datasets_pasta.predict import SHIPPED_MODEL

    if not SHIPPED_MODEL.is_dir():
        pytest.skip(f"{SHIPPED_MODEL} is not there (a checkout without the shipped checkpoint)")
    example = SHIPPED_MODEL.parents[1] / "space" / "examples" / "phantom_liver_cancer.nii.gz"
    (result,) = predict(example, tmp_path / "out", progress=False)
    _check_geometry(tmp_path / "out", example)
    report = validate_report(json.loads(result.files["report"].read_text()))
    assert result.files["report_text"].read_text().strip()  # the text decoder wrote something
    reference = np.asarray(nib.load(example.with_name("phantom_liver_cancer_lesion.nii.gz")).dataobj) > 0
    predicted = np.asarray(nib.load(result.files["lesion_mask"]).dataobj) > 0
    dice = 2 * (reference & predicted).sum() / max(reference.sum() + predicted.sum(), 1)
    assert dice > MIN_EXAMPLE_DICE, f"lesion Dice {dice:.3f} on the bundled example"
    assert report.lesions and any(lesion.organ == "liver" for lesion in report.lesions)
