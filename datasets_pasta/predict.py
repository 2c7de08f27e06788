"""``pasta predict``: run a PASTA pipeline on a user's CT and write the results in the input's geometry.

One case (a NIfTI file, a DICOM series folder, or a zip of either) gives a folder with:

- ``lesion_mask.nii.gz`` (0 background, k = lesion k) and ``organ_map.nii.gz`` (ids in
  ``organ_labels.json``), on the input's own voxel grid with its affine, so they overlay the CT in
  any viewer; for DICOM input also ``lesions_seg.dcm`` and ``organs_seg.dcm`` (DICOM SEG
  referencing the input series, written with highdicom);
- ``report.json`` (the structured report, schema :data:`modeling_pasta.report.SCHEMA_VERSION`) and
  ``report.txt`` (its text), ``generated_report.txt`` (the report decoder's free text, with a
  report model);
- ``lesions.csv`` (one row per lesion: type, organ, size, volume, mean HU, confidence) and
  ``lesions.json`` (the pipeline's full lesion table with class probabilities);
- ``case.json``: what was run on what; it is written last, and a case folder is renamed into
  place only when complete, so a re-run skips finished cases and never sees half a case.

A folder that is not itself a DICOM series is a batch: each NIfTI file, zip and DICOM sub-folder
in it is one case, written to ``OUT/<case name>/``.

Inputs that do not look like CT in HU (an MRI, a PET, a segmentation) are refused
(:func:`modeling_pasta.image_io.check_ct`) unless ``allow_non_ct`` is set.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from modeling_pasta.image_io import ImageReadError, Volume, check_ct, is_dicom_file, load_image, load_zip

logger = logging.getLogger(__name__)

#: The checkpoint this project trains and ships (a pipeline folder), the default model.
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "pasta-small"
#: Environment variable that overrides the default model (a folder).
MODEL_ENV = "PASTA_MODEL"
#: Columns of ``lesions.csv`` (and of the Space's lesion table).
LESION_TABLE_COLUMNS = (
    "id", "type", "malignant", "organ", "location", "size_mm", "volume_ml", "mean_hu", "confidence"
)
#: File that marks a finished case folder.
CASE_FILE = "case.json"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class CaseResult:
    """The outcome of one case of :func:`predict`.

    Attributes:
        name: the case name (the output sub-folder's name in batch mode).
        input: the input path.
        folder: the folder holding the case's outputs.
        files: output kind -> path.
        lesions: the lesion table rows (see :data:`LESION_TABLE_COLUMNS`).
        seconds: wall time of the prediction (0 when skipped).
        skipped: True when a finished result was already there.
        error: the message when the case failed (batch mode goes on with the next case).
        volume: the input CT as read (only for cases predicted in this call).
        prediction: the pipeline's :class:`~modeling_pasta.pipeline_pasta.PastaPrediction` (idem).
    """

    name: str
    input: Path
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    lesions: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False
    error: str | None = None
    volume: Volume | None = field(default=None, repr=False)
    prediction: Any = field(default=None, repr=False)


def resolve_model(model: str | Path | None = None) -> Path:
    """The model folder: ``model``, else ``$PASTA_MODEL``, else the shipped :data:`SHIPPED_MODEL`.

    Raises:
        FileNotFoundError: the folder does not exist, with what to pass instead.
    """
    path = Path(model or os.environ.get(MODEL_ENV) or SHIPPED_MODEL)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no PASTA checkpoint there; pass --model with a checkpoint or pipeline folder "
            f"(see training/) or set {MODEL_ENV}"
        )
    return path


def load_pipeline(model: str | Path | None = None, **kwargs: Any):
    """A :class:`~modeling_pasta.pipeline_pasta.PastaPipeline` from ``model`` (see :func:`resolve_model`)."""
    from transformers.utils import logging as hf_logging

    from modeling_pasta.pipeline_pasta import PastaPipeline

    path = resolve_model(model)
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a weight-loading bar per part is noise for a small local model
    try:
        return PastaPipeline.from_pretrained(path, **kwargs)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def case_name(path: Path) -> str:
    """A case's name: the file name without ``.nii``, ``.nii.gz`` or ``.zip``, or the folder name."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _holds_dicom(folder: Path, recursive: bool) -> bool:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return any(f.is_file() and is_dicom_file(f) for f in files)


def find_cases(input_path: str | Path) -> tuple[list[Path], bool]:
    """The cases under ``input_path`` and whether it is a batch.

    A file, or a folder with DICOM files directly in it, is one case. Any other folder is a batch
    of its NIfTI files, zips and sub-folders holding DICOM, sorted by name.

    Raises:
        ImageReadError: the path does not exist, or a batch folder holds no case.
    """
    path = Path(input_path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if path.is_file() or _holds_dicom(path, recursive=False):
        return [path], False
    cases = [
        p
        for p in sorted(path.iterdir())
        if not p.name.startswith(".")
        and ((p.is_file() and (_is_nifti(p) or p.suffix.lower() == ".zip")) or (p.is_dir() and _holds_dicom(p, True)))
    ]
    if not cases:
        raise ImageReadError(f"{path}: no NIfTI file, zip or DICOM series found in this folder")
    return cases, True


def lesion_rows(prediction) -> list[dict[str, Any]]:
    """The lesion table of a prediction, one dict per lesion with :data:`LESION_TABLE_COLUMNS`.

    Type and confidence come from the structured report when there is one; without a
    classification model they are empty.
    """
    typed = {lesion.id: lesion for lesion in prediction.report.lesions} if prediction.report else {}
    rows = []
    for lesion in prediction.lesions:
        reported = typed.get(lesion.id)
        rows.append(
            {
                "id": lesion.id,
                "type": reported.type if reported else "",
                "malignant": reported.malignant if reported else "",
                "organ": lesion.organ,
                "location": lesion.location,
                "size_mm": " x ".join(f"{s:.1f}" for s in lesion.size_mm),
                "volume_ml": round(lesion.volume_ml, 2),
                "mean_hu": round(lesion.mean_hu, 1),
                "confidence": round(reported.confidence, 3) if reported and reported.confidence is not None else "",
            }
        )
    return rows


def _write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LESION_TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_seg_sources(volume: Volume) -> list:
    """The source datasets a DICOM SEG of ``volume`` references, in ``volume.dicom_files`` order.

    UIDs that de-identification emptied are filled in memory (the files are not touched): SOP Class /
    Instance UIDs from the file meta, Study / Series UIDs derived from the frame of reference (with
    one warning per series).

    Raises:
        ValueError: not read from DICOM files, or a slice without SOP UIDs or frame of reference.
    """
    import pydicom
    from pydicom.uid import generate_uid

    if volume.dicom_files is None:
        raise ValueError(f"{volume.source}: not read from DICOM files; a DICOM SEG needs the source series")
    sources, derived = [], set()
    for path in volume.dicom_files:
        dataset = pydicom.dcmread(path)
        meta = getattr(dataset, "file_meta", None)
        for name, meta_name in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if not str(dataset.get(name, "") or ""):
                value = str(meta.get(meta_name, "") or "") if meta is not None else ""
                if not value:
                    raise ValueError(f"{path}: no {name} in the header or file meta; a DICOM SEG cannot reference it")
                setattr(dataset, name, value)
        frame_of_reference = str(dataset.get("FrameOfReferenceUID", "") or "")
        if not frame_of_reference:
            raise ValueError(f"{path}: no FrameOfReferenceUID; a DICOM SEG cannot be placed on this series")
        for name in ("StudyInstanceUID", "SeriesInstanceUID"):
            if not str(dataset.get(name, "") or ""):
                # De-identified series sometimes blank these; derive a stable stand-in from the frame of reference.
                setattr(dataset, name, generate_uid(entropy_srcs=[frame_of_reference, name]))
                derived.add(name)
        sources.append(dataset)
    if derived:
        logger.warning(
            "%s: the series has no %s (de-identified?); the DICOM SEG references derived ones, so a viewer may "
            "not link it to the series by itself (the NIfTI masks are unaffected)",
            volume.source, " or ".join(sorted(derived)),
        )
    return sources


def write_dicom_seg(
    label_map: np.ndarray,
    segment_names: dict[int, str],
    sources: Sequence,
    path: str | Path,
    *,
    lesions: bool,
    series_description: str,
) -> Path | None:
    """Write a label map on a DICOM series' grid as a DICOM SEG (binary, one segment per label).

    ``label_map`` has the array layout of :func:`~modeling_pasta.image_io.load_dicom_series`
    (columns, rows, slices); ``sources`` are the series' datasets in slice order
    (:func:`read_seg_sources`). Labels absent from the map are left out; with none present nothing
    is written and None is returned.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    present = [int(v) for v in np.unique(label_map) if v != 0 and int(v) in segment_names]
    if not present:
        return None
    renumber = np.zeros(int(label_map.max()) + 1, dtype=np.uint16)
    renumber[present] = np.arange(1, len(present) + 1)
    frames = renumber[label_map].transpose(2, 1, 0)  # (slices, rows, columns), slices in file order
    algorithm = hd.AlgorithmIdentificationSequence(
        name="PASTA", version="0.1", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment_names[value][:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure if lesions else codes.SCT.Organ,
            segmented_property_type=codes.SCT.Neoplasm if lesions else codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(present, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900 + int(lesions),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="PASTA on the Hub",
        manufacturer_model_name="PASTA",
        software_versions="0.1",
        device_serial_number="0",
        series_description=series_description,
    )
    path = Path(path)
    seg.save_as(path)
    return path


def _predict_volume(pipeline, volume: Volume, folder: Path) -> tuple[Any, dict[str, Path], list[dict[str, Any]]]:
    from .report_text import render_report_text

    prediction = pipeline(volume)
    files = prediction.save(folder)
    rows = lesion_rows(prediction)
    files["lesion_table"] = _write_csv(rows, folder / "lesions.csv")
    if prediction.report is not None:
        files["report_summary"] = folder / "report.txt"
        files["report_summary"].write_text(render_report_text(prediction.report, np.random.default_rng(0)) + "\n")
    if volume.dicom_files is not None and prediction.lesion_mask is not None:
        sources = read_seg_sources(volume)
        lesion_names = {row["id"]: f"lesion {row['id']} {row['type']}".strip() for row in rows}
        for kind, label_map, names, lesions in (
            ("lesions_seg", prediction.lesion_mask, lesion_names, True),
            ("organs_seg", prediction.organ_map, prediction.organ_labels, False),
        ):
            written = write_dicom_seg(
                label_map, names, sources, folder / f"{kind}.dcm",
                lesions=lesions, series_description=f"PASTA {kind.split('_')[0]}",
            )
            if written is not None:
                files[kind] = written
    return prediction, files, rows


def predict_case(
    pipeline,
    input_path: str | Path,
    folder: str | Path,
    *,
    allow_non_ct: bool = False,
    model_name: str = "",
) -> CaseResult:
    """Predict one case and write its folder atomically (see the module docstring for the files).

    Raises:
        ImageReadError: unreadable input (naming the file); NotCTError (a subclass) when it does not
            look like CT and ``allow_non_ct`` is False.
    """
    input_path, folder = Path(input_path), Path(folder)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pasta-predict-") as tmp:
        # a zip is unpacked here, not by load_image, so a DICOM SEG can still reference its slices
        zipped = input_path.is_file() and input_path.name.lower().endswith(".zip")
        volume = load_zip(input_path, tmp) if zipped else load_image(input_path)
        if allow_non_ct:
            try:
                check_ct(volume)
            except ImageReadError as err:
                logger.warning("%s (processing anyway: allow_non_ct)", err)
        else:
            check_ct(volume)
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = folder.parent / f".{folder.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        prediction, files, rows = _predict_volume(pipeline, volume, partial)
    seconds = time.perf_counter() - start
    summary = {
        "input": str(input_path),
        "model": model_name,
        "shape": list(volume.array.shape),
        "spacing_mm": list(volume.spacing_mm),
        "orientation": volume.orientation,
        "lesions": len(rows),
        "seconds": round(seconds, 2),
        "files": {kind: path.name for kind, path in files.items()},
    }
    (partial / CASE_FILE).write_text(json.dumps(summary, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    files = {kind: folder / path.name for kind, path in files.items()}
    files["case"] = folder / CASE_FILE
    return CaseResult(
        case_name(input_path), input_path, folder, files, rows, seconds, volume=volume, prediction=prediction
    )


def _finished(folder: Path, input_path: Path) -> CaseResult | None:
    marker = folder / CASE_FILE
    if not marker.is_file():
        return None
    summary = json.loads(marker.read_text())
    files = {kind: folder / name for kind, name in summary.get("files", {}).items()}
    files["case"] = marker
    rows = []
    if (folder / "lesions.csv").is_file():
        with (folder / "lesions.csv").open() as handle:
            rows = list(csv.DictReader(handle))
    return CaseResult(case_name(input_path), input_path, folder, files, rows, skipped=True)


def predict(
    input_path: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    *,
    allow_non_ct: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> list[CaseResult]:
    """Run the pipeline on a case or a batch folder (see the module docstring).

    A single case writes into ``out``; a batch into ``out/<case name>``, skipping cases already
    finished there (unless ``overwrite``). In a batch, a case that fails is logged and recorded in
    its :class:`CaseResult` and the rest go on; a single case raises.

    Raises:
        ImageReadError / NotCTError: a single case that cannot be used; FileNotFoundError: no model.
    """
    from tqdm.auto import tqdm

    cases, batch = find_cases(input_path)
    out = Path(out)
    model_path = resolve_model(model)
    pipeline = None
    results: list[CaseResult] = []
    bar = tqdm(cases, desc="pasta predict", unit="case", disable=not progress or not batch)
    for case in bar:
        folder = out / case_name(case) if batch else out
        done = None if overwrite else _finished(folder, case)
        if done is not None:
            logger.info("%s: already done in %s, skipped", case, folder)
            results.append(done)
            continue
        if pipeline is None:
            pipeline = load_pipeline(model_path, device=device)
        bar.set_postfix_str(case.name)
        try:
            result = predict_case(pipeline, case, folder, allow_non_ct=allow_non_ct, model_name=str(model_path))
        except ValueError as err:  # ImageReadError and NotCTError included
            if not batch:
                raise
            logger.error("%s: %s", case, err)
            results.append(CaseResult(case_name(case), case, folder, error=str(err)))
            continue
        logger.info("%s: %d lesion(s) in %.1f s -> %s", case, len(result.lesions), result.seconds, folder)
        results.append(result)
    return results
