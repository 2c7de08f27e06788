"""Simulated FDG PET (SUV) on a CT's grid, from its organ map and lesion mask.

The corpus can carry a PET channel so PET/CT pretraining (early fusion of two channels) runs
end to end without real PET data. The model is deliberately simple and physiological:

- every organ label gets a per-scan standardized uptake value (SUV) drawn from a typical range
  of FDG biodistribution (brain, myocardium, kidneys and urinary bladder high; liver ~2;
  blood pool ~1.5-2; bone marrow ~1-1.5; muscle and background ~0.5-1; lungs ~0.3-0.5), with
  smooth variation inside the organ (patchier in bowel);
- the body (a filled hull of the labelled anatomy) outside every organ gets background
  soft-tissue uptake, air outside the body none;
- malignant lesions are avid (SUVmax 4-15, heterogeneous, sometimes with a photopenic
  necrotic centre), benign ones low (cysts photopenic, stones without uptake);
- the activity is averaged onto a PET grid of about :data:`PET_VOXEL_MM` (a whole multiple of
  the CT voxel), blurred by the scanner's point-spread function (Gaussian, ~5-7 mm FWHM,
  converted to voxels with the grid spacing), gets count-dependent (Poisson-like), spatially
  correlated noise, and is interpolated back to the CT grid. The result is non-negative
  float32 SUV.
"""

from __future__ import annotations

import logging
import re
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from modeling_pasta.report import LESION_TYPES

logger = logging.getLogger(__name__)

#: FWHM of a Gaussian = this many standard deviations.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

#: SUV ranges (low, high) by organ label name (regular expressions, searched); the first match wins.
ORGAN_SUV: tuple[tuple[str, tuple[float, float]], ...] = (
    (r"^brain$", (6.0, 10.0)),
    (r"^heart$|^atrial_appendage", (2.0, 8.0)),
    (r"^urinary_bladder$", (5.0, 25.0)),
    (r"^kidney_cyst_", (0.3, 0.6)),
    (r"^kidney_", (3.0, 6.0)),
    (r"^liver$", (1.8, 2.6)),
    (r"^spleen$", (1.5, 2.2)),
    (r"aorta|vena|vein|artery|trunk", (1.4, 2.0)),
    (r"^lung_", (0.3, 0.55)),
    (r"^trachea$", (0.05, 0.2)),
    (r"^vertebrae_|^sacrum$|^hip_|^sternum$", (1.0, 1.5)),
    (r"^femur_|^humerus_|^rib_|^scapula_|^clavicula_|^skull$", (0.6, 1.0)),
    (r"^costal_cartilages$", (0.5, 0.8)),
    (r"^stomach$", (1.3, 2.5)),
    (r"^small_bowel$|^duodenum$", (1.2, 2.2)),
    (r"^colon$", (1.0, 2.2)),
    (r"^esophagus$", (1.2, 2.0)),
    (r"^pancreas$", (1.2, 1.8)),
    (r"^gallbladder$", (0.6, 1.0)),
    (r"^adrenal_gland_", (1.0, 1.6)),
    (r"^thyroid_gland$", (1.2, 2.5)),
    (r"^prostate$", (1.0, 1.6)),
    (r"^spinal_cord$", (1.0, 1.5)),
    (r"^gluteus_|^autochthon_|^iliopsoas_", (0.6, 1.0)),
)
#: Uptake outside every labelled organ but inside the body (fat and unlabelled soft tissue).
BACKGROUND_SUV = (0.5, 0.9)
#: Peak SUV of a malignant lesion before the point-spread function.
MALIGNANT_SUVMAX = (4.0, 15.0)
#: SUV of benign lesions: water-like cysts are photopenic, calculi take up no FDG.
BENIGN_SUV = {"cyst": (0.2, 0.5), "stone": (0.3, 0.7)}
#: Relative intra-organ variation (standard deviation, fraction of the organ's SUV); bowel is patchy.
_ORGAN_VARIATION = {"colon": 0.3, "small_bowel": 0.25, "stomach": 0.2, "duodenum": 0.2}
#: Count-statistics noise: coefficient of variation at SUV 1 (noise SD grows as sqrt(SUV)).
NOISE_COV_AT_SUV1 = (0.08, 0.15)
#: Range of the point-spread function's FWHM (mm).
PSF_FWHM_MM = (5.0, 7.0)
#: The PET is simulated on a grid of about this voxel size (a whole multiple of the CT's) and
#: interpolated back to the CT grid, as PET reconstructions are coarser than CT.
PET_VOXEL_MM = 3.0


def organ_suv_range(name: str) -> tuple[float, float]:
    """Typical FDG SUV range of an organ label (``BACKGROUND_SUV`` for labels without a rule)."""
    for pattern, suv in ORGAN_SUV:
        if re.search(pattern, name):
            return suv
    return BACKGROUND_SUV


def _body_mask(organ_map: np.ndarray, spacing: np.ndarray, margin_mm: float = 15.0) -> np.ndarray:
    """The body: labelled anatomy grown by ``margin_mm`` (subcutaneous tissue), holes filled per axial slice.

    Computed on a grid of about 3 mm and expanded back, which is plenty for a background region.
    """
    stride = np.maximum(1, np.floor(3.0 / spacing).astype(int))
    coarse = organ_map[:: stride[0], :: stride[1], :: stride[2]] > 0
    if not coarse.any():
        return np.zeros(organ_map.shape, dtype=bool)
    grown = ndimage.distance_transform_edt(~coarse, sampling=spacing * stride) <= margin_mm
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    filled = ndimage.binary_fill_holes(grown, structure=in_plane)
    idx = [np.minimum(np.arange(n) // s, c - 1) for n, s, c in zip(organ_map.shape, stride, filled.shape)]
    return filled[np.ix_(*idx)]


def _smooth_unit_noise(shape: tuple[int, ...], sigma_vox: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), np.maximum(sigma_vox, 0.3))
    std = float(noise.std())
    return noise / std if std > 0 else noise


def _lesion_uptake(
    lesion: np.ndarray, lesion_type: str, spacing: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """SUV inside one lesion's bounding box (values only meaningful where ``lesion`` is True)."""
    if LESION_TYPES[lesion_type].malignant:
        suv_max = float(np.exp(rng.uniform(*np.log(MALIGNANT_SUVMAX))))
        texture = _smooth_unit_noise(lesion.shape, 4.0 / spacing, rng)
        suv = suv_max * np.clip(0.75 + 0.2 * texture, 0.35, 1.0)
        depth = ndimage.distance_transform_edt(lesion, sampling=spacing)
        deepest = float(depth.max())
        if deepest > 8.0 and rng.random() < 0.35:  # photopenic necrotic centre
            centre = np.clip((depth - 0.5 * deepest) / (0.5 * deepest), 0.0, 1.0)
            suv = suv * (1.0 - 0.7 * centre)
        return suv.astype(np.float32)
    kind = "stone" if lesion_type.endswith("stone") else "cyst"
    return np.full(lesion.shape, rng.uniform(*BENIGN_SUV[kind]), dtype=np.float32)


def simulate_pet(
    organ_map: np.ndarray,
    label_names: Mapping[int, str],
    lesion_mask: np.ndarray,
    lesion_types: Sequence[str],
    spacing_mm: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """A simulated FDG PET in SUV (float32, non-negative) on the grid of ``organ_map``.

    Args:
        organ_map: organ label ids (3D).
        label_names: label id -> organ name (TotalSegmentator "total" names select the uptake).
        lesion_mask: same shape; 0 background, k for lesion k.
        lesion_types: type of lesion k at index k - 1 (keys of
            :data:`modeling_pasta.report.LESION_TYPES`).
        spacing_mm: voxel size (mm) along each array axis, for the point-spread function.
        rng: the only source of randomness.

    Raises:
        ValueError: shapes differ, a lesion id has no type, or a type is unknown.
    """
    organ_map = np.asarray(organ_map)
    lesion_mask = np.asarray(lesion_mask)
    if organ_map.ndim != 3 or organ_map.shape != lesion_mask.shape:
        raise ValueError(f"organ map {organ_map.shape} and lesion mask {lesion_mask.shape} must be the same 3D shape")
    spacing = np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be 3 positive numbers, got {list(spacing_mm)}")
    unknown = [t for t in lesion_types if t not in LESION_TYPES]
    if unknown:
        raise ValueError(f"unknown lesion type(s) {unknown}; valid types: {', '.join(LESION_TYPES)}")
    ids = np.unique(lesion_mask)
    ids = ids[ids != 0]
    if len(ids) and int(ids.max()) > len(lesion_types):
        raise ValueError(
            f"lesion mask holds id {int(ids.max())} but only {len(lesion_types)} lesion type(s) were given"
        )

    shape = organ_map.shape
    factor = np.maximum(1, np.floor(PET_VOXEL_MM / spacing + 1e-6).astype(int))
    pet_spacing = spacing * factor

    # Tracer distribution on the CT grid: one SUV per organ label and scan, background in the
    # body, none outside it, lesions on top.
    lookup = np.zeros(256, dtype=np.float32)
    variation = np.zeros(256, dtype=np.float32)
    for label in np.unique(organ_map):
        if label == 0:
            continue
        name = label_names.get(int(label), "")
        lookup[label] = rng.uniform(*organ_suv_range(name))
        variation[label] = next((v for k, v in _ORGAN_VARIATION.items() if name.startswith(k)), 0.08)
    activity = lookup[organ_map]
    spread = variation[organ_map]
    background = (organ_map == 0) & _body_mask(organ_map, spacing)
    activity[background] = rng.uniform(*BACKGROUND_SUV)
    spread[background] = 0.1
    for k, box in enumerate(ndimage.find_objects(lesion_mask.astype(np.int32)), start=1):
        if box is None:
            continue
        lesion = lesion_mask[box] == k
        activity[box][lesion] = _lesion_uptake(lesion, lesion_types[k - 1], spacing, rng)[lesion]
        spread[box][lesion] = 0.0

    # On the PET grid (~PET_VOXEL_MM): voxel averaging, smooth intra-organ variation, the
    # point-spread function, count noise; then interpolated back to the CT grid.
    pet = _block_mean(activity, factor)
    pet *= np.clip(1.0 + _block_mean(spread, factor) * _smooth_unit_noise(pet.shape, 8.0 / pet_spacing, rng), 0.3, 2.0)
    fwhm = rng.uniform(*PSF_FWHM_MM)
    sigma_vox = fwhm / FWHM_PER_SIGMA / pet_spacing
    pet = ndimage.gaussian_filter(pet, sigma_vox)
    cov = rng.uniform(*NOISE_COV_AT_SUV1)
    pet = pet + cov * np.sqrt(np.maximum(pet, 0.0)) * _smooth_unit_noise(pet.shape, 0.5 * sigma_vox, rng)
    logger.debug("PET: %s mm voxels, PSF FWHM %.1f mm, noise CoV %.2f at SUV 1", pet_spacing, fwhm, cov)
    return np.maximum(_upsample_linear(pet, factor, shape), 0.0).astype(np.float32)


def _block_mean(volume: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Mean over blocks of ``factor`` voxels (the last, partial block padded with edge values)."""
    if np.all(factor == 1):
        return volume.astype(np.float32)
    padded_shape = -(-np.array(volume.shape) // factor) * factor
    padded = np.pad(volume, [(0, int(p - n)) for p, n in zip(padded_shape, volume.shape)], mode="edge")
    blocks = padded.reshape([d for n, f in zip(padded_shape, factor) for d in (n // f, f)])
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def _upsample_linear(coarse: np.ndarray, factor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of a block-averaged grid back to the fine grid (block centres as samples)."""
    out = coarse
    for axis, (f, n) in enumerate(zip(factor, shape)):
        if f == 1:
            continue
        pos = np.clip((np.arange(n) + 0.5) / f - 0.5, 0.0, out.shape[axis] - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, out.shape[axis] - 1)
        w = (pos - lo).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, lo, axis=axis) * (1.0 - w) + np.take(out, hi, axis=axis) * w
    return out


__all__ = ["BACKGROUND_SUV", "MALIGNANT_SUVMAX", "ORGAN_SUV", "PSF_FWHM_MM", "organ_suv_range", "simulate_pet"]
