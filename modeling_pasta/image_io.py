"""Reading CT volumes and keeping their geometry: loading, validation, canonical frame, resampling.

Everything here works on ``(array, affine)`` pairs: a 3D array in voxel order and its 4x4 affine
(voxel index -> RAS+ world, mm). Intensities of CT are Hounsfield units (HU).

The canonical frame is RAS+ voxel order (first axis towards the patient's "R" end as NIfTI
defines it, second anterior, third superior). :func:`to_canonical` records the flips and
permutation so :func:`from_canonical` puts any voxel output back on the input's own grid.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from .report import voxel_spacing


class ImageReadError(ValueError):
    """An input volume that cannot be used; the message names the file and the problem."""


@dataclass
class Volume:
    """A 3D volume with its geometry.

    Attributes:
        array: voxel data (HU for CT, label ids for maps), 3D.
        affine: voxel -> RAS+ world (mm), 4x4.
        source: where it came from (file path or description), for error messages.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str = "<array>"
    #: For a DICOM series: its image files in the order of the array's last axis (else None).
    dicom_files: tuple[str, ...] | None = None

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in voxel_spacing(self.affine))

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


def check_volume(array: np.ndarray, source: str, *, allow_nan: bool = False) -> np.ndarray:
    """Return ``array`` as 3D after checking it; trailing singleton axes (x, y, z, 1) are dropped.

    Raises:
        ImageReadError: for 2D or 4D data, empty arrays or NaN/inf voxels, naming ``source``.
    """
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ImageReadError(
            f"{source}: expected a 3D volume, got a {array.ndim}D array of shape {tuple(array.shape)}"
            + (" (a single slice? pass the whole series)" if array.ndim == 2 else "")
            + (" (a time series or multi-channel image? pass one 3D volume)" if array.ndim == 4 else "")
        )
    if min(array.shape) < 1:
        raise ImageReadError(f"{source}: the volume is empty (shape {tuple(array.shape)})")
    if not allow_nan and np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            raise ImageReadError(
                f"{source}: {int(bad.sum())} voxel(s) are NaN or infinite; fill or crop them before use"
            )
    return array


class NotCTError(ImageReadError):
    """A readable volume that does not look like a CT in Hounsfield units (an MRI, PET or label map)."""


#: A CT has air-density voxels (outside the body, lungs, bowel gas): at least this share below -500 HU.
MIN_AIR_FRACTION = 0.001
#: Label maps hold few distinct non-negative integers; CT in HU holds thousands.
MAX_LABEL_MAP_VALUES = 256


def check_ct(volume: Volume) -> None:
    """Refuse a volume that is not a CT in HU, with the reason and the file in the message.

    Two checks, both cheap: a label map (integer voxels, non-negative, at most
    :data:`MAX_LABEL_MAP_VALUES` distinct values) is refused as a segmentation; a volume without
    air-density voxels (less than :data:`MIN_AIR_FRACTION` below -500 HU; MRI signal and PET SUV
    are non-negative) or with values far outside the HU scale is refused as not HU. A CT cropped
    tightly inside soft tissue fails the second check too; callers offer an explicit override.

    Raises:
        NotCTError: naming ``volume.source`` and what was found.
    """
    array = volume.array
    low, high = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.integer) and low >= 0 and high < 2**16:
        values = np.unique(array.ravel()[:: max(array.size // 2_000_000, 1)])  # a sample is enough to count
        if values.size <= MAX_LABEL_MAP_VALUES:
            raise NotCTError(
                f"{volume.source}: looks like a label map, not a CT ({values.size} distinct integer values "
                f"from {int(low)} to {int(high)}); pass the CT image, not its segmentation"
            )
    air = float(np.count_nonzero(array < -500)) / array.size
    if air < MIN_AIR_FRACTION:
        raise NotCTError(
            f"{volume.source}: does not look like a CT in Hounsfield units: {100 * air:.2f} % of voxels below "
            f"-500 HU (air), values from {low:g} to {high:g}; an MRI, PET or rescaled image? "
            "CT intensities must be in HU"
        )
    if low < -10_000 or high > 40_000:
        raise NotCTError(
            f"{volume.source}: values from {low:g} to {high:g} are outside the Hounsfield scale; CT must be in HU"
        )


def check_label_map(image: Volume, labels: Volume, *, error: type[Exception] = ValueError, what: str = "label map") -> None:
    """Raise ``error`` naming both files when ``labels`` does not overlay ``image`` voxel for voxel
    (same shape and affine), or holds fractional values instead of integer label ids."""
    if image.array.shape != labels.array.shape:
        raise error(
            f"{labels.source}: {what} shape {labels.array.shape} does not match the image {image.source} "
            f"shape {image.array.shape}"
        )
    if not np.allclose(image.affine, labels.affine, atol=1e-3 * max(1.0, float(np.abs(image.affine).max()))):
        raise error(
            f"{labels.source}: {what} affine does not match the image {image.source} affine "
            f"(orientations {labels.orientation} vs {image.orientation}); it would not overlay the image"
        )
    if np.issubdtype(labels.array.dtype, np.floating) and not np.allclose(labels.array, np.round(labels.array)):
        raise error(f"{labels.source}: a {what} must hold integer label ids, found fractional values")


def check_affine(affine: np.ndarray, source: str) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ImageReadError(f"{source}: the affine must be a finite 4x4 matrix, got {affine!r}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ImageReadError(f"{source}: the affine is singular (a voxel size of 0?)")
    return affine


def load_nifti(path: str | Path, *, dtype: np.dtype | type | None = None) -> Volume:
    """Read a NIfTI file (``.nii`` / ``.nii.gz``) fully into memory, with clear errors.

    Raises:
        ImageReadError: the file is missing, not NIfTI, truncated or corrupt, or not 3D, or has
            NaN voxels; the message names the file.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ImageReadError(f"{source}: no such file")
    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for bad headers
        raise ImageReadError(f"{source}: not a readable NIfTI file ({type(err).__name__}: {err})") from err
    try:
        array = np.asarray(image.dataobj)
    except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as err:
        raise ImageReadError(
            f"{source}: the file is truncated or corrupt, its voxel data cannot be read ({err})"
        ) from err
    array = check_volume(array, source)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return Volume(array=array, affine=check_affine(image.affine, source), source=source)


def save_nifti(volume: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a 3D array with its affine; qform and sform both carry it, so viewers agree."""
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(volume), np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp" + "".join(path.suffixes))
    nib.save(image, str(tmp))
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class CanonicalTransform:
    """How an array was reoriented to RAS+: the nibabel orientation and the original shape/affine."""

    ornt: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, CanonicalTransform]:
    """Reorient to the closest RAS+ voxel order (flips and axis permutation only, no resampling)."""
    ornt = orientations.io_orientation(affine)
    canonical = orientations.apply_orientation(array, ornt)
    new_affine = affine @ orientations.inv_ornt_aff(ornt, array.shape)
    transform = CanonicalTransform(ornt=ornt, shape=tuple(array.shape), affine=np.asarray(affine))
    return np.ascontiguousarray(canonical), new_affine, transform


def from_canonical(array: np.ndarray, transform: CanonicalTransform) -> np.ndarray:
    """Undo :func:`to_canonical` on an array of the canonical grid (any dtype)."""
    inverse = orientations.ornt_transform(orientations.axcodes2ornt(("R", "A", "S")), transform.ornt)
    back = orientations.apply_orientation(array, inverse)
    if tuple(back.shape) != transform.shape:
        raise ValueError(f"cannot map back: got shape {back.shape}, expected {transform.shape}")
    return np.ascontiguousarray(back)


def _meta_tensor(array: np.ndarray, affine: np.ndarray):
    """A one-channel float32 MONAI ``MetaTensor`` carrying the affine (what MONAI's resamplers take)."""
    import torch
    from monai.data import MetaTensor

    data = torch.from_numpy(np.ascontiguousarray(array).astype(np.float32))[None]
    return MetaTensor(data, affine=torch.as_tensor(np.asarray(affine), dtype=torch.float64))


def _cast_like(resampled, dtype: np.dtype) -> np.ndarray:
    """The first channel of a resampler's output in the input's dtype (integers rounded and clipped)."""
    values = np.asarray(resampled.array[0] if hasattr(resampled, "array") else resampled.numpy()[0])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    elif not (np.issubdtype(dtype, np.floating) or dtype == bool):
        dtype = np.float32
    return values.astype(dtype)


def resample_to_spacing(
    array: np.ndarray,
    affine: np.ndarray,
    spacing_mm: float | tuple[float, float, float],
    *,
    is_label: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample to a voxel size (mm) with MONAI's ``Spacing``; labels use nearest neighbour.

    The field of view is kept (the new grid spans the same world box); the returned affine is
    the new grid's. Intensities keep their dtype's meaning (HU stays HU).
    """
    import torch
    from monai.transforms import Spacing

    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    current = voxel_spacing(affine)
    if np.allclose(current, spacing, rtol=1e-4, atol=1e-4):
        return array, np.asarray(affine, dtype=np.float64)
    transform = Spacing(
        pixdim=tuple(spacing), mode="nearest" if is_label else "bilinear", padding_mode="border",
        dtype=torch.float32,
    )
    out = transform(_meta_tensor(array, affine))
    return _cast_like(out, array.dtype), out.affine.numpy().astype(np.float64)


def resample_to_grid(
    array: np.ndarray,
    affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: tuple[int, int, int],
    *,
    is_label: bool,
) -> np.ndarray:
    """Resample onto a given grid (its affine and shape) with MONAI's ``SpatialResample``.

    Labels use nearest neighbour and keep their dtype; intensities are interpolated linearly
    (integer dtypes are rounded back). Voxels outside the source take the nearest border value.
    """
    import torch
    from monai.transforms import SpatialResample

    dst_shape = tuple(int(s) for s in dst_shape)
    if tuple(array.shape) == dst_shape and np.allclose(affine, dst_affine, atol=1e-4):
        return array
    resample = SpatialResample(mode="nearest" if is_label else "bilinear", padding_mode="border", dtype=torch.float32)
    dst = torch.as_tensor(np.asarray(dst_affine), dtype=torch.float64)
    return _cast_like(resample(_meta_tensor(array, affine), dst_affine=dst, spatial_size=dst_shape), array.dtype)


# --------------------------------------------------------------------------------------------
# DICOM series and generic loading (NIfTI file, DICOM file / folder, zip of either)
# --------------------------------------------------------------------------------------------

#: LPS (DICOM patient frame) -> RAS+ (NIfTI world frame).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: A slice gap larger than this times the median slice distance means missing slices.
MISSING_SLICE_FACTOR = 1.5


def is_dicom_file(path: Path) -> bool:
    """True for files with the DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as err:  # pydicom raises many types for broken files
        raise ImageReadError(f"{path}: not a readable DICOM file, the header is truncated or corrupt ({err})") from err


def _dicom_files(path: Path) -> list[Path]:
    if path.is_dir():
        candidates = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        candidates = sorted(p for p in path.parent.iterdir() if p.is_file() and not p.name.startswith("."))
    return [p for p in candidates if p.name.upper() != "DICOMDIR" and is_dicom_file(p)]


def load_dicom_series(path: str | Path, *, series_instance_uid: str | None = None) -> Volume:
    """Read one DICOM CT series (a folder, or any file of the series) into HU and a RAS+ affine.

    Slices are sorted by ``ImagePositionPatient`` along the slice normal; the affine maps
    (column, row, slice) indices to RAS+ mm (DICOM's LPS with x and y negated). Pixel values
    go through ``RescaleSlope`` / ``RescaleIntercept`` to HU (int16 when they stay integers).

    Args:
        path: a folder holding the series (searched recursively) or one file of it (its folder
            is searched, and only that file's series is read).
        series_instance_uid: which series to read when the folder holds several.

    Raises:
        ImageReadError: no DICOM files, several series, inconsistent orientation / size /
            pixel spacing, duplicate or missing slices, a single slice, multi-frame files, or a
            truncated file; the message names the folder or file and the problem.
    """
    import pydicom

    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    files = _dicom_files(path)
    if not files:
        raise ImageReadError(f"{path}: no DICOM files found (files must carry the 'DICM' preamble)")
    headers = {f: _read_dicom_header(f) for f in files}
    if path.is_file() and series_instance_uid is None:
        own = headers.get(path) or _read_dicom_header(path)
        series_instance_uid = str(own.get("SeriesInstanceUID", ""))
    headers = [(f, h) for f, h in headers.items() if h.get("Rows") is not None]  # images only
    series: dict[str, list] = {}
    for f, h in headers:
        series.setdefault(str(h.get("SeriesInstanceUID", "")), []).append((f, h))
    if series_instance_uid is not None:
        if series_instance_uid not in series:
            raise ImageReadError(f"{path}: no series with SeriesInstanceUID {series_instance_uid!r}")
        members = series[series_instance_uid]
    elif len(series) > 1:
        listing = ", ".join(f"{uid or '<empty>'} ({len(m)} files)" for uid, m in series.items())
        raise ImageReadError(
            f"{path}: holds {len(series)} DICOM series ({listing}); pass one series per folder "
            "or choose one with series_instance_uid="
        )
    else:
        members = next(iter(series.values()), [])
    source = str(path)
    if len(members) < 2:
        raise ImageReadError(f"{source}: only {len(members)} DICOM slice(s); a CT volume needs the whole series")

    def _field(h, name: str, f: Path):
        value = h.get(name)
        if value is None:
            raise ImageReadError(f"{f}: the DICOM header lacks {name}, the slice cannot be placed in space")
        return value

    first_file, first = members[0]
    orientation = np.asarray(_field(first, "ImageOrientationPatient", first_file), dtype=float)
    pixel_spacing = np.asarray(_field(first, "PixelSpacing", first_file), dtype=float)
    rows, cols = int(first.Rows), int(first.Columns)
    for f, h in members:
        if int(h.get("NumberOfFrames", 1) or 1) > 1:
            raise ImageReadError(f"{f}: multi-frame DICOM is not supported; export single-frame slices or NIfTI")
        if not np.allclose(np.asarray(_field(h, "ImageOrientationPatient", f), dtype=float), orientation, atol=1e-4):
            raise ImageReadError(
                f"{source}: inconsistent ImageOrientationPatient ({f.name} differs from {first_file.name})"
            )
        if (int(h.Rows), int(h.Columns)) != (rows, cols):
            raise ImageReadError(
                f"{source}: inconsistent slice size ({f.name} is {h.Rows}x{h.Columns}, "
                f"{first_file.name} is {rows}x{cols})"
            )
        if not np.allclose(np.asarray(_field(h, "PixelSpacing", f), dtype=float), pixel_spacing, atol=1e-4):
            raise ImageReadError(f"{source}: inconsistent PixelSpacing ({f.name} differs from {first_file.name})")

    row_cosine, col_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, col_cosine)
    positions = np.array([np.asarray(_field(h, "ImagePositionPatient", f), dtype=float) for f, h in members])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    members = [members[i] for i in order]
    positions, along = positions[order], along[order]
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        k = int(np.argmax(gaps < 1e-3))
        raise ImageReadError(
            f"{source}: two slices at the same position ({members[k][0].name}, {members[k + 1][0].name}); "
            "duplicate files or two series mixed in one folder"
        )
    median_gap = float(np.median(gaps))
    if np.any(gaps > MISSING_SLICE_FACTOR * median_gap):
        k = int(np.argmax(gaps > MISSING_SLICE_FACTOR * median_gap))
        raise ImageReadError(
            f"{source}: missing slice(s): a gap of {gaps[k]:.2f} mm between slice positions "
            f"{along[k]:.2f} and {along[k + 1]:.2f} mm (slice distance {median_gap:.2f} mm)"
        )

    slopes, intercepts, planes = [], [], []
    for f, _ in members:
        try:
            dataset = pydicom.dcmread(str(f))
            pixels = dataset.pixel_array
        except Exception as err:  # decoders raise many types for truncated pixel data
            raise ImageReadError(
                f"{f}: the pixel data cannot be read; the file is truncated or corrupt ({err})"
            ) from err
        if pixels.shape != (rows, cols):
            raise ImageReadError(f"{f}: pixel data of shape {pixels.shape}, expected {(rows, cols)}")
        slopes.append(float(dataset.get("RescaleSlope", 1.0) or 1.0))
        intercepts.append(float(dataset.get("RescaleIntercept", 0.0) or 0.0))
        planes.append(pixels.T)  # (columns, rows): axis 0 runs along the row cosine
    slopes_arr, intercepts_arr = np.asarray(slopes), np.asarray(intercepts)
    raw = np.stack(planes, axis=-1).astype(np.float64)
    hu = raw * slopes_arr + intercepts_arr
    integral = np.all(slopes_arr == np.round(slopes_arr)) and np.all(intercepts_arr == np.round(intercepts_arr))
    if integral and hu.min() >= np.iinfo(np.int16).min and hu.max() <= np.iinfo(np.int16).max:
        hu = hu.astype(np.int16)
    else:
        hu = hu.astype(np.float32)

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cosine * pixel_spacing[1]
    affine_lps[:3, 1] = col_cosine * pixel_spacing[0]
    affine_lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine_lps[:3, 3] = positions[0]
    array = check_volume(hu, source)
    return Volume(
        array=array,
        affine=check_affine(LPS_TO_RAS @ affine_lps, source),
        source=source,
        dicom_files=tuple(str(f) for f, _ in members),
    )


def _extract_zip(archive: Path, destination: Path, max_bytes: int) -> None:
    """Extract ``archive`` into ``destination``, refusing paths that leave it and oversized content."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as handle:
            members = handle.infolist()
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise ImageReadError(f"{archive}: unpacks to {total} bytes, more than the {max_bytes} allowed")
            root = destination.resolve()
            for member in members:
                target = (root / member.filename).resolve()
                if not target.is_relative_to(root):
                    raise ImageReadError(f"{archive}: unsafe path {member.filename!r} in the zip (outside the archive)")
            handle.extractall(root)
    except zipfile.BadZipFile as err:
        raise ImageReadError(f"{archive}: not a readable zip file ({err})") from err


def load_zip(
    archive: str | Path,
    destination: str | Path,
    *,
    series_instance_uid: str | None = None,
    max_unzipped_bytes: int = 8 * 2**30,
) -> Volume:
    """Read the CT in a zip (one NIfTI file or one DICOM series), unpacked into ``destination``.

    The caller owns ``destination``: while it exists, a DICOM volume's ``dicom_files`` point at the
    unpacked slices (a DICOM SEG needs them). Errors name the archive, not the unpacked paths.

    Raises:
        ImageReadError: not a zip, unsafe member paths, more than ``max_unzipped_bytes`` unpacked,
            several NIfTI files, neither NIfTI nor DICOM inside, or an unreadable volume.
    """
    archive, destination = Path(archive), Path(destination)
    _extract_zip(archive, destination, max_unzipped_bytes)
    niftis = sorted(p for p in destination.rglob("*") if p.name.lower().endswith((".nii", ".nii.gz")))
    dicom = bool(_dicom_files(destination))
    if niftis and not dicom and len(niftis) > 1:
        raise ImageReadError(f"{archive}: holds {len(niftis)} NIfTI files; zip one volume")
    if not niftis and not dicom:
        raise ImageReadError(f"{archive}: holds neither a NIfTI file nor DICOM files")
    try:
        if niftis and not dicom:
            volume = load_nifti(niftis[0])
        else:
            volume = load_dicom_series(destination, series_instance_uid=series_instance_uid)
    except ImageReadError as err:
        raise ImageReadError(f"{archive}: {str(err).replace(str(destination), '<zip>')}") from err
    volume.source = str(archive)
    return volume


def load_image(
    path: str | Path,
    *,
    series_instance_uid: str | None = None,
    max_unzipped_bytes: int = 8 * 2**30,
) -> Volume:
    """Read a CT from a NIfTI file, a DICOM series (folder or one of its files) or a zip of either.

    Raises:
        ImageReadError: naming the file and the problem (see :func:`load_nifti`,
            :func:`load_dicom_series` and :func:`load_zip`).
    """
    import tempfile

    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    name = path.name.lower()
    if path.is_dir():
        return load_dicom_series(path, series_instance_uid=series_instance_uid)
    if name.endswith((".nii", ".nii.gz")):
        return load_nifti(path)
    if name.endswith(".zip"):
        with tempfile.TemporaryDirectory(prefix="pasta-zip-") as tmp:
            volume = load_zip(path, tmp, series_instance_uid=series_instance_uid, max_unzipped_bytes=max_unzipped_bytes)
        volume.dicom_files = None  # they lived in the temporary folder
        return volume
    if is_dicom_file(path):
        return load_dicom_series(path, series_instance_uid=series_instance_uid)
    raise ImageReadError(f"{path}: unknown format; pass a NIfTI (.nii/.nii.gz), a DICOM file or folder, or a zip")
