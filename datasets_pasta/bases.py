"""Healthy bases: CT scans with organ label maps, loaded, checked, resampled and augmented.

A base is a CT (HU, int16) and its organ map (uint8, TotalSegmentator "total" ids by default)
on one grid in the canonical RAS+ voxel order. Lesions are inserted into bases; every corpus
sample starts from one. Bases come from a folder of NIfTI files (any orientation) or from the
procedural phantom (:mod:`datasets_pasta.phantom`).

Folder layout: a CT ``<name>.nii.gz`` (or ``.nii``) with its label map beside it as
``<name>_organs.nii.gz`` (also accepted: ``_labels``, ``_seg``, ``_organ_map``). An
``organ_labels.json`` in the folder (``{"1": "spleen", ...}``) translates its label ids;
without one, TotalSegmentator "total" ids are assumed. CTs without a label map are skipped with
a log message.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from scipy import ndimage

from modeling_pasta.image_io import (
    ImageReadError,
    check_label_map,
    load_nifti,
    resample_to_spacing,
    to_canonical,
)
from modeling_pasta.organs import ORGAN_GROUPS, TOTALSEGMENTATOR_TOTAL, load_label_names, name_to_id
from modeling_pasta.report import PHASES, voxel_spacing

logger = logging.getLogger(__name__)

LABEL_SUFFIXES = ("_organs", "_labels", "_seg", "_organ_map")
NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$")


class BaseError(ValueError):
    """A healthy base that cannot be used (shape/affine mismatch, missing organ, ...)."""


def organ_label_ids(organ: str, label_names: Mapping[int, str]) -> list[int]:
    """Label ids of an organ group (``"kidney"``) or a single label name in ``label_names``."""
    by_name = name_to_id(label_names)
    return [by_name[m] for m in ORGAN_GROUPS.get(organ, (organ,)) if m in by_name]


@dataclass
class HealthyBase:
    """A healthy CT with its organ map, in RAS+ voxel order.

    Attributes:
        ct_hu: CT in Hounsfield units, int16, 3D.
        organ_map: organ label ids, uint8, same shape.
        affine: voxel -> RAS+ world (mm).
        label_names: label id -> organ name for ``organ_map``.
        base_id: stable name (file stem, or ``phantom-<seed>``).
        phase: contrast phase, one of ``plain`` / ``arterial`` / ``venous``.
        noise_hu: the scan's fine-scale noise level on this grid, as :func:`estimate_noise_hu`
            measures it (lesion texture measures amplitude and grain itself, see
            :mod:`datasets_pasta.lesions`).
    """

    ct_hu: np.ndarray
    organ_map: np.ndarray
    affine: np.ndarray
    label_names: dict[int, str] = field(default_factory=lambda: dict(TOTALSEGMENTATOR_TOTAL))
    base_id: str = "base"
    phase: str = "plain"
    noise_hu: float = 10.0

    def __post_init__(self) -> None:
        if self.ct_hu.shape != self.organ_map.shape:
            raise BaseError(
                f"{self.base_id}: CT shape {self.ct_hu.shape} and organ map shape {self.organ_map.shape} differ"
            )
        if self.phase not in PHASES:
            raise BaseError(f"{self.base_id}: phase {self.phase!r} is not one of {list(PHASES)}")

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in voxel_spacing(self.affine))

    def present_organs(self) -> list[str]:
        """Names of the organ labels with at least one voxel."""
        ids = np.unique(self.organ_map)
        return sorted(self.label_names[int(i)] for i in ids if i != 0 and int(i) in self.label_names)

    def label_ids(self, organ: str) -> list[int]:
        """Label ids of an organ group (``"kidney"``) or a single label name (``"kidney_left"``)."""
        return organ_label_ids(organ, self.label_names)

    def organ_mask(self, organ: str) -> np.ndarray:
        """Boolean mask of an organ group or label name."""
        return np.isin(self.organ_map, self.label_ids(organ))

    def has_organ(self, organ: str, min_voxels: int = 1) -> bool:
        return int(self.organ_mask(organ).sum()) >= min_voxels

    def require_organ(self, organ: str, min_voxels: int = 1) -> None:
        """Raise :class:`BaseError` naming the missing organ and the ones the base has."""
        if not self.has_organ(organ, min_voxels):
            members = ORGAN_GROUPS.get(organ, (organ,))
            raise BaseError(
                f"base {self.base_id!r} has no {organ!r} (labels {list(members)}; at least {min_voxels} voxels "
                f"needed); organs available: {', '.join(self.present_organs()) or 'none'}"
            )


def estimate_phase(ct_hu: np.ndarray, organ_map: np.ndarray, label_names: Mapping[int, str]) -> str:
    """Contrast phase from the aorta's and portal vein's mean HU (plain if neither is labelled).

    Arterial when the aorta is above 150 HU, venous when the aorta or portal vein is above
    90 HU, plain otherwise — typical CT values, not a hard physical boundary.
    """
    ids = name_to_id(label_names)

    def mean_of(name: str) -> float | None:
        if name not in ids:
            return None
        mask = organ_map == ids[name]
        return float(ct_hu[mask].mean()) if mask.any() else None

    aorta = mean_of("aorta")
    portal = mean_of("portal_vein_and_splenic_vein")
    if aorta is not None and aorta > 150:
        return "arterial"
    if max(v for v in (aorta, portal, -1e9) if v is not None) > 90:
        return "venous"
    return "plain"


def estimate_noise_hu(ct_hu: np.ndarray, organ_map: np.ndarray, label_names: Mapping[int, str]) -> float:
    """The scan's noise level: standard deviation of the high-pass residual inside solid organs.

    Uses the liver and spleen eroded by two voxels (parenchyma without edges, where anatomy is
    smooth so the fine-scale residual is mostly noise); falls back to 10 HU when they are absent.
    The residual is CT minus a 1-voxel Gaussian blur; a 1-voxel Gaussian high-pass keeps about 0.95
    of white noise's standard deviation, hence the division.
    """
    ids = name_to_id(label_names)
    solid = [ids[n] for n in ("liver", "spleen") if n in ids]
    mask = ndimage.binary_erosion(np.isin(organ_map, solid), iterations=2)
    if mask.sum() < 100:
        return 10.0
    ct = ct_hu.astype(np.float32)
    residual = ct - ndimage.gaussian_filter(ct, 1.0)
    return float(np.clip(residual[mask].std() / 0.95, 2.0, 60.0))


def find_base_files(directory: str | Path) -> list[tuple[Path, Path]]:
    """(CT, label map) pairs in a folder, sorted by name; CTs without a label map are skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BaseError(f"{directory}: not a folder of healthy bases")
    files = sorted(p for p in directory.iterdir() if NIFTI_SUFFIX.search(p.name))
    stems = {NIFTI_SUFFIX.sub("", p.name): p for p in files}
    pairs = []
    for stem, path in stems.items():
        if any(stem.endswith(s) for s in LABEL_SUFFIXES):
            continue
        label = next((stems[stem + s] for s in LABEL_SUFFIXES if stem + s in stems), None)
        if label is None:
            logger.info("%s: no label map beside it (%s), not used as a base", path, "/".join(LABEL_SUFFIXES))
            continue
        pairs.append((path, label))
    if not pairs:
        raise BaseError(
            f"{directory}: no CT with a label map found (expected <name>.nii.gz beside <name>_organs.nii.gz)"
        )
    return pairs


def load_base(
    ct_path: str | Path,
    label_path: str | Path,
    *,
    label_names: Mapping[int, str] | None = None,
    phase: str | None = None,
    base_id: str | None = None,
) -> HealthyBase:
    """Load a CT and its organ map, check they share one grid, and reorient both to RAS+.

    Raises:
        ImageReadError: a file is missing, corrupt or truncated, not 3D, or has NaNs.
        BaseError: the shapes or affines of CT and label map differ, or the label map has ids
            outside ``label_names``.
    """
    ct = load_nifti(ct_path)
    labels = load_nifti(label_path)
    check_label_map(ct, labels, error=BaseError)
    names = dict(label_names) if label_names is not None else dict(TOTALSEGMENTATOR_TOTAL)
    present = {int(i) for i in np.unique(labels.array)} - {0}
    unknown = sorted(present - set(names))
    if unknown:
        raise BaseError(
            f"{label_path}: label ids {unknown} are not in the label description; pass an organ_labels.json"
        )
    if max(present, default=0) > 255:
        raise BaseError(f"{label_path}: label ids above 255 are not supported (uint8 organ maps)")
    ct_hu, affine, _ = to_canonical(ct.array, ct.affine)
    organ_map, _, _ = to_canonical(labels.array, labels.affine)
    ct_hu = np.clip(ct_hu, -1024, 3071).astype(np.int16)
    organ_map = organ_map.astype(np.uint8)
    return HealthyBase(
        ct_hu=ct_hu,
        organ_map=organ_map,
        affine=affine,
        label_names=names,
        base_id=base_id or NIFTI_SUFFIX.sub("", Path(ct_path).name),
        phase=phase or estimate_phase(ct_hu, organ_map, names),
        noise_hu=estimate_noise_hu(ct_hu, organ_map, names),
    )


def load_base_dir(directory: str | Path) -> list[HealthyBase]:
    """Every (CT, label map) pair of a folder as a base (see the module docstring for the layout)."""
    directory = Path(directory)
    labels_json = directory / "organ_labels.json"
    names = load_label_names(labels_json if labels_json.exists() else None)
    return [load_base(ct, lab, label_names=names) for ct, lab in find_base_files(directory)]


def resample_base(base: HealthyBase, spacing_mm: float | tuple[float, float, float]) -> HealthyBase:
    """The base on a grid of the given voxel size (mm): CT linear, organ map nearest.

    Interpolation changes the voxel-level noise, so ``noise_hu`` is measured again on the new grid.
    """
    ct, affine = resample_to_spacing(base.ct_hu, base.affine, spacing_mm, is_label=False)
    organs, _ = resample_to_spacing(base.organ_map, base.affine, spacing_mm, is_label=True)
    if ct.shape != organs.shape:  # both grids come from the same affine and shape; guard anyway
        raise BaseError(f"{base.base_id}: resampling gave CT {ct.shape} and organ map {organs.shape}")
    if ct is base.ct_hu:
        return base
    return replace(base, ct_hu=ct, organ_map=organs, affine=affine,
                   noise_hu=estimate_noise_hu(ct, organs, base.label_names))


def augment_anatomy(
    base: HealthyBase,
    rng: np.random.Generator,
    *,
    rotate_deg: float = 8.0,
    scale: float = 0.05,
    elastic_mm: float = 5.0,
    control_spacing_mm: float = 40.0,
) -> HealthyBase:
    """A new base from a random affine and a smooth elastic deformation of this one.

    CT and organ map are warped by the same field (CT trilinear, organ map nearest), so the map
    still overlays the CT. The deformation is a random rotation (up to ``rotate_deg`` about each
    axis), anisotropic scaling (±``scale``) and a displacement field of standard deviation
    ``elastic_mm`` interpolated from a coarse control grid (``control_spacing_mm``), all about
    the volume centre. The grid and affine are unchanged; the body moves inside it.
    """
    import torch
    import torch.nn.functional as F

    shape = np.array(base.ct_hu.shape)
    spacing = np.array(base.spacing_mm)
    extent_mm = (shape - 1) * spacing / 2.0  # half-extent: normalised coordinate 1 <-> this many mm
    rot = _rotation_matrix(np.deg2rad(rng.uniform(-rotate_deg, rotate_deg, size=3)))
    scales = 1.0 + rng.uniform(-scale, scale, size=3)
    # Output position (mm about the centre) -> input position: the inverse of rotate-then-scale.
    inverse_mm = np.linalg.inv(rot @ np.diag(scales))
    theta_norm = np.diag(1.0 / extent_mm) @ inverse_mm @ np.diag(extent_mm)
    # grid_sample orders coordinates (x=W, y=H, z=D) = our axes (2, 1, 0): permute the matrix.
    perm = [2, 1, 0]
    theta = np.zeros((1, 3, 4), dtype=np.float32)
    theta[0, :, :3] = theta_norm[np.ix_(perm, perm)]
    size = (1, 1, *shape.tolist())
    grid = F.affine_grid(torch.from_numpy(theta), size, align_corners=True)

    coarse_shape = np.maximum(2, np.ceil(shape * spacing / control_spacing_mm).astype(int) + 1)
    coarse = rng.normal(0.0, 1.0, size=(1, 3, *coarse_shape.tolist())).astype(np.float32)
    coarse *= (elastic_mm / extent_mm[perm]).astype(np.float32)[None, :, None, None, None]
    dense = F.interpolate(torch.from_numpy(coarse), size=tuple(shape.tolist()), mode="trilinear", align_corners=True)
    grid = grid + dense.permute(0, 2, 3, 4, 1)

    ct = torch.from_numpy(base.ct_hu.astype(np.float32))[None, None]
    organs = torch.from_numpy(base.organ_map.astype(np.float32))[None, None]
    ct_out = F.grid_sample(ct, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
    organs_out = F.grid_sample(organs, grid, mode="nearest", padding_mode="border", align_corners=True)[0, 0]
    return replace(
        base,
        ct_hu=np.clip(np.rint(ct_out.numpy()), -1024, 3071).astype(np.int16),
        organ_map=organs_out.numpy().astype(np.uint8),
    )


def _rotation_matrix(angles: Iterable[float]) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


__all__ = [
    "BaseError",
    "HealthyBase",
    "ImageReadError",
    "augment_anatomy",
    "estimate_noise_hu",
    "estimate_phase",
    "find_base_files",
    "load_base",
    "load_base_dir",
    "resample_base",
]
