"""The Space through its API (``gradio_client``): an upload gives views, lesion table, report and
downloads in the upload's geometry; bad uploads give an error message and the app keeps serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("gradio_client", reason="needs gradio_client (pip install -e '.[test]')")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from modeling_pasta.report import validate_report  # noqa: E402


@pytest.fixture(scope="module")
def client(served_space):
    return Client(served_space, verbose=False)


def _analyse(client, path):
    return client.predict(handle_file(str(path)), "soft tissue", ["lesions", "organs"], api_name="/analyse")


def _by_name(files) -> dict[str, Path]:
    return {Path(f).name: Path(f) for f in files}


def test_example_upload_gives_views_table_report_and_downloads(client, space_app, tmp_path):
    (example,) = space_app.EXAMPLES
    outputs = _analyse(client, example)
    axial, coronal, sagittal = outputs[0:3]
    table, report_md, report_json, downloads, status = outputs[6:11]
    for image in (axial, coronal, sagittal):
        assert Path(image).is_file()
    assert example.name in status and "lesion" in status
    report = validate_report(report_json)
    assert len(table["data"]) == len(report.lesions)
    assert "Structured report" in report_md

    files = _by_name(downloads)
    assert {"lesion_mask.nii.gz", "organ_map.nii.gz", "report.json", "lesions.csv", "case.json"} <= set(files)
    ct, mask = nib.load(example), nib.load(files["lesion_mask.nii.gz"])
    assert mask.shape == ct.shape  # the download overlays the upload (LPS example, same grid and affine)
    np.testing.assert_allclose(mask.affine, ct.affine, atol=1e-4)
    assert json.loads(files["report.json"].read_text()) == report_json


def test_a_bad_upload_shows_an_error_and_the_app_keeps_serving(client, space_app, real_data, tmp_path):
    garbage = tmp_path / "scan.nii.gz"
    garbage.write_bytes(b"\x1f\x8b\x08 truncated")
    with pytest.raises(AppError, match=r"scan\.nii\.gz: not a readable NIfTI"):
        _analyse(client, garbage)
    mri = tmp_path / "mri.nii.gz"
    shutil.copy(real_data / "mr" / "abdomen_mr_small.nii.gz", mri)
    with pytest.raises(AppError, match=r"mri\.nii\.gz: does not look like a CT in Hounsfield units"):
        _analyse(client, mri)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(AppError, match="(?i)invalid file type|not a NIfTI"):
        _analyse(client, text)
    outputs = _analyse(client, space_app.EXAMPLES[0])  # still serving
    assert validate_report(outputs[8])


def test_uploads_over_the_size_limit_are_refused(client, tmp_path):
    big = tmp_path / "big.nii"
    big.write_bytes(b"\0" * (2 * 2**20))  # the served app's limit is 1 MB
    with pytest.raises(Exception, match=r"(?i)too large|limit|size"):
        _analyse(client, big)
