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

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

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
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    current = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    if np.allclose(current, spacing, rtol=1e-4, atol=1e-4):
        return array, np.asarray(affine, dtype=np.float64)
    data = torch.from_numpy(np.ascontiguousarray(array).astype(np.float32))[None]
    meta = MetaTensor(data, affine=torch.as_tensor(np.asarray(affine), dtype=torch.float64))
    transform = Spacing(
        pixdim=tuple(spacing), mode="nearest" if is_label else "bilinear", padding_mode="border",
        dtype=torch.float32,
    )
    out = transform(meta)
    new_affine = out.affine.numpy().astype(np.float64)
    values = out.array[0] if hasattr(out, "array") else out.numpy()[0]
    values = np.asarray(values)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(array.dtype), new_affine
