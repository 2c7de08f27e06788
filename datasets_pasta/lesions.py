"""The 15 lesion models of PASTA-Gen: where a lesion goes, what it looks like, how it is drawn.

A lesion is made in two steps:

1. :func:`sample_lesion_spec` decides everything a radiologist would describe and the generator
   has to render: the host organ label, the centre, the radii (mm) and size class, the growth
   pattern (a mass, wall thickening of a hollow organ, a polypoid intraluminal mass, stones, a
   vertebral-body focus), the report attributes that are not measured from voxels (shape,
   margin, enhancement, texture, density variation, special features) and the intensity model
   (HU targets relative to the organ's own HU in this scan and phase, heterogeneity, necrosis,
   calcification, ...). The result is a JSON-able :class:`LesionSpec`.
2. :func:`insert_lesion` draws it into a float CT (HU) in place, touching only a bounding box
   around the lesion: a deformed, lobulated ellipsoid (random low-order radial perturbation and
   Gaussian lobules on the sphere, random rotation), with thin radial spikes when the margin is
   spiculated, or a shell inside the organ boundary for wall thickening; clipped to the host
   organ (eroded for well-contained lesions), to perirenal/peripancreatic fat (label 0) for
   exophytic growth, and to neighbouring organs only when ``invasion`` is set. The intensity is
   the lesion's HU field plus band-limited (Gaussian-filtered) noise with the scan's own noise
   level and correlation (measured in a smooth organ of the base), blended into
   the CT with a weight that is 1 in the core and ramps down across the boundary over the
   margin's edge width (mm), so the boundary is not a step. The returned mask is where that
   weight is at least 0.5.

The report's measured fields (size, mean HU, density, location, adjacency) are not computed
here: the caller measures them from the final voxels with
:func:`modeling_pasta.report.measure_lesion`.

HU values follow typical CT appearances (PASTA_SPEC.md, section 1): cysts 0-20 HU; kidney
stones 200-1500 HU; solid cancers 20-80 HU away from their organ depending on phase; lung
ground glass -700 to -300 HU against -850 HU lung; blastic bone metastases 500-1500 HU.
Directions use the base affine (RAS+ world): ``+y`` anterior, so the dependent (supine) side of
the gallbladder is ``-y``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage

from modeling_pasta.organs import ORGAN_GROUPS, name_to_id, organ_group
from modeling_pasta.report import (
    DENSITY_VARIATIONS,
    ENHANCEMENTS,
    LESION_TYPES,
    MARGINS,
    PHASES,
    SHAPES,
    SPECIAL_FEATURES,
    TEXTURES,
)

from .bases import BaseError, HealthyBase

logger = logging.getLogger(__name__)

#: Size classes of lesion synthesis, as ranges of the lesion's mean radius in mm (PASTA_SPEC.md:
#: tiny < 5 mm, small 5-10, medium 10-20, large 20-40+ mm radius). Each type allows a subset
#: (:data:`TYPE_SIZE_WEIGHTS`) and caps the radius (:data:`TYPE_MAX_RADIUS_MM`); the organ's
#: own size caps it further. For wall lesions of hollow organs the radius is the half-length
#: of the thickened segment.
SIZE_CLASSES: dict[str, tuple[float, float]] = {
    "tiny": (1.5, 5.0),
    "small": (5.0, 10.0),
    "medium": (10.0, 20.0),
    "large": (20.0, 40.0),
}

#: Sampling weights of the size classes per lesion type.
TYPE_SIZE_WEIGHTS: dict[str, dict[str, float]] = {
    "lung_cancer": {"tiny": 0.15, "small": 0.3, "medium": 0.35, "large": 0.2},
    "liver_cancer": {"tiny": 0.05, "small": 0.25, "medium": 0.4, "large": 0.3},
    "gallbladder_cancer": {"small": 0.35, "medium": 0.5, "large": 0.15},
    "pancreatic_cancer": {"tiny": 0.05, "small": 0.35, "medium": 0.5, "large": 0.1},
    "bladder_cancer": {"tiny": 0.1, "small": 0.35, "medium": 0.4, "large": 0.15},
    "esophageal_cancer": {"small": 0.2, "medium": 0.5, "large": 0.3},
    "gastric_cancer": {"small": 0.2, "medium": 0.5, "large": 0.3},
    "kidney_cancer": {"tiny": 0.05, "small": 0.25, "medium": 0.4, "large": 0.3},
    "colorectal_cancer": {"small": 0.25, "medium": 0.5, "large": 0.25},
    "bone_metastasis": {"tiny": 0.25, "small": 0.45, "medium": 0.3},
    "liver_cyst": {"tiny": 0.25, "small": 0.35, "medium": 0.3, "large": 0.1},
    "gallstone": {"tiny": 0.55, "small": 0.4, "medium": 0.05},
    "pancreatic_cyst": {"tiny": 0.3, "small": 0.45, "medium": 0.25},
    "kidney_cyst": {"tiny": 0.2, "small": 0.4, "medium": 0.3, "large": 0.1},
    "kidney_stone": {"tiny": 0.65, "small": 0.35},
}

#: Largest mean radius (mm) per type: lung masses up to 70 mm across, stones up to ~2 cm.
TYPE_MAX_RADIUS_MM: dict[str, float] = {
    "lung_cancer": 35.0,
    "liver_cancer": 40.0,
    "gallbladder_cancer": 30.0,
    "pancreatic_cancer": 30.0,
    "bladder_cancer": 30.0,
    "esophageal_cancer": 40.0,
    "gastric_cancer": 40.0,
    "kidney_cancer": 40.0,
    "colorectal_cancer": 35.0,
    "bone_metastasis": 18.0,
    "liver_cyst": 40.0,
    "gallstone": 12.0,
    "pancreatic_cyst": 20.0,
    "kidney_cyst": 35.0,
    "kidney_stone": 10.0,
}

#: Growth patterns a :class:`LesionSpec` can carry in ``params["growth"]``.
GROWTH_PATTERNS = ("mass", "wall", "intraluminal", "stones", "bone")

#: Cancers of hollow organs: wall thickening or a polypoid intraluminal mass, not a ball in the lumen.
HOLLOW_ORGAN_TYPES = (
    "gallbladder_cancer",
    "bladder_cancer",
    "esophageal_cancer",
    "gastric_cancer",
    "colorectal_cancer",
)

#: Soft-tissue HU of a solid tumor on a plain scan (lung cancer, hollow-organ cancers, lytic bone).
_TUMOR_PLAIN_HU = (32.0, 48.0)
#: Contrast enhancement (HU added to the plain value) of a solid tumor by phase.
_TUMOR_ENHANCEMENT_HU = {"plain": (0.0, 0.0), "arterial": (15.0, 60.0), "venous": (15.0, 50.0)}
#: Enhancement (HU) above which a tumor's enhancement is called "marked" rather than "mild".
_MARKED_ENHANCEMENT_HU = 30.0
#: Window (HU) in which organ voxels count as parenchyma for the organ's reference HU.
_PARENCHYMA_WINDOW_HU = (-30.0, 350.0)
#: Work on at most about this many voxels when sampling positions in an organ (strided grid).
_COARSE_VOXELS = 250_000


@dataclass
class LesionSpec:
    """Everything decided about one lesion before it is drawn (JSON-able).

    Attributes:
        lesion_type: key of :data:`modeling_pasta.report.LESION_TYPES`.
        organ_label: the specific host label (``"kidney_right"``, ``"vertebrae_L2"``, ...).
        center_vox: centre in voxel coordinates of the base grid.
        radii_mm: semi-axes of the lesion's ellipsoid (mm); for wall lesions of hollow organs,
            of the thickened segment.
        size_class: key of :data:`SIZE_CLASSES` actually used (shrunk when the organ is small).
        shape, margin, enhancement, texture, density_variation: report attributes (schema enums).
        special_features: subset of :data:`modeling_pasta.report.SPECIAL_FEATURES`.
        invasion: True when the lesion is allowed to cross into an adjacent organ.
        params: the intensity and geometry model (``growth`` pattern, HU targets, edge width
            ``edge_mm``, lobulation, spicules, necrosis fraction, ...), JSON-able.
    """

    lesion_type: str
    organ_label: str
    center_vox: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    size_class: str
    shape: str
    margin: str
    enhancement: str
    texture: str
    density_variation: str
    special_features: list[str] = field(default_factory=list)
    invasion: bool = False
    params: dict[str, float | str] = field(default_factory=dict)


@dataclass
class SynthesizedLesion:
    """A lesion drawn into a CT: its specification and its voxels (bool, full volume, non-empty)."""

    spec: LesionSpec
    mask: np.ndarray


# --------------------------------------------------------------------------------------------
# Host organ geometry (coarse grid over the label's bounding box, for choosing positions)
# --------------------------------------------------------------------------------------------


@dataclass
class _Host:
    """One host label on a strided grid over its bounding box."""

    label: str
    label_id: int
    origin: np.ndarray  # full-grid index of the coarse grid's (0, 0, 0)
    stride: int
    mask: np.ndarray  # host voxels on the coarse grid
    depth_mm: np.ndarray  # distance to the nearest non-host voxel (mm), 0 outside
    spacing_mm: np.ndarray  # full-grid voxel size

    @property
    def max_depth_mm(self) -> float:
        return float(self.depth_mm.max())

    @property
    def coarse_spacing_mm(self) -> np.ndarray:
        return self.spacing_mm * self.stride

    def to_full(self, idx: np.ndarray) -> np.ndarray:
        return self.origin + np.asarray(idx) * self.stride


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    bounds = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        bounds.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(bounds)


def _host_geometry(base: HealthyBase, label: str) -> _Host:
    label_id = name_to_id(base.label_names)[label]
    box = _bounding_box(base.organ_map == label_id)
    shape = np.array([s.stop - s.start for s in box])
    stride = max(1, int(np.ceil((np.prod(shape) / _COARSE_VOXELS) ** (1.0 / 3.0))))
    coarse = base.organ_map[box][::stride, ::stride, ::stride] == label_id
    spacing = np.array(base.spacing_mm)
    padded = np.pad(coarse, 1)
    depth = ndimage.distance_transform_edt(padded, sampling=spacing * stride)[1:-1, 1:-1, 1:-1]
    return _Host(
        label=label,
        label_id=label_id,
        origin=np.array([s.start for s in box]),
        stride=stride,
        mask=coarse,
        depth_mm=depth.astype(np.float32),
        spacing_mm=spacing,
    )


def _organ_reference_hu(base: HealthyBase, host: _Host) -> float:
    """The host organ's own parenchymal HU in this scan: median of its eroded voxels in a soft-tissue window."""
    box = tuple(slice(o, o + n * host.stride) for o, n in zip(host.origin, host.mask.shape))
    ct = base.ct_hu[box][:: host.stride, :: host.stride, :: host.stride].astype(np.float32)
    inner = host.mask & (host.depth_mm > host.coarse_spacing_mm.max() * 1.01)
    region = inner if inner.sum() >= 20 else host.mask
    values = ct[region]
    lo, hi = _PARENCHYMA_WINDOW_HU
    window = values[(values >= lo) & (values <= hi)]
    return float(np.median(window if window.size >= 10 else values))


#: Solid organs whose interior shows the scan's noise texture (smooth anatomy), in order of preference.
_TEXTURE_REFERENCE_ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")
#: Gaussian high-pass (voxels) used to isolate the noise texture from smooth anatomy.
_TEXTURE_HIGHPASS_VOX = 2.0


def _gaussian_overlap(a: float, b: float, d: float) -> float:
    """Cross-correlation at distance ``d`` of two unit 3D Gaussians of widths ``a`` and ``b``."""
    v = a * a + b * b
    return float((2.0 * np.pi * v) ** -1.5 * np.exp(-d * d / (2.0 * v)))


def _highpassed_noise_stats(sigma_vox: float) -> tuple[float, float]:
    """Variance (per unit noise variance) and lag-1 correlation of Gaussian-correlated noise after the high-pass."""
    s, t = sigma_vox, float(np.hypot(_TEXTURE_HIGHPASS_VOX, sigma_vox))

    def cov(d: float) -> float:
        return _gaussian_overlap(s, s, d) - 2.0 * _gaussian_overlap(s, t, d) + _gaussian_overlap(t, t, d)

    return cov(0.0) / _gaussian_overlap(s, s, 0.0), cov(1.0) / cov(0.0)


def _scan_texture(base: HealthyBase) -> tuple[float, float]:
    """The scan's noise: standard deviation (HU) and Gaussian correlation width (mm).

    Measured in the interior of a smooth solid organ after a Gaussian high-pass: the lag-1
    autocorrelation gives the correlation width (a resampled scan has smoother noise than a
    native one), the robust variance the amplitude. Without such an organ: ``base.noise_hu``
    and a correlation of 0.6 voxel.
    """
    spacing = float(np.mean(base.spacing_mm))
    fallback = (float(base.noise_hu), 0.6 * spacing)
    by_name = name_to_id(base.label_names)
    for organ in _TEXTURE_REFERENCE_ORGANS:
        if organ not in by_name:
            continue
        organ_mask = base.organ_map == by_name[organ]
        if organ_mask.sum() < 500:
            continue
        box = _bounding_box(organ_mask)
        centre = [(b.start + b.stop) // 2 for b in box]
        crop = tuple(slice(max(c - 24, b.start), min(c + 24, b.stop)) for c, b in zip(centre, box))
        inner = ndimage.binary_erosion(organ_mask[crop], iterations=2)
        if inner.sum() < 200:
            continue
        ct = base.ct_hu[crop].astype(np.float32)
        residual = ct - ndimage.gaussian_filter(ct, _TEXTURE_HIGHPASS_VOX)
        lag1 = []
        for axis in range(3):
            a, m = np.moveaxis(residual, axis, 0), np.moveaxis(inner, axis, 0)
            both = m[:-1] & m[1:]
            if both.sum() > 50:
                lag1.append(np.corrcoef(a[:-1][both], a[1:][both])[0, 1])
        values = residual[inner]
        robust_std = 1.4826 * float(np.median(np.abs(values - np.median(values))))
        if not lag1 or not np.isfinite(robust_std):
            continue
        widths = np.linspace(0.3, 3.0, 55)
        stats = np.array([_highpassed_noise_stats(w) for w in widths])
        width = float(np.interp(np.mean(lag1), stats[:, 1], widths))
        kept_variance = float(np.interp(width, widths, stats[:, 0]))
        noise_hu = float(np.clip(robust_std / np.sqrt(kept_variance), 2.0, 60.0))
        return noise_hu, width * spacing
    return fallback


def _choose_host_label(base: HealthyBase, group: str, rng: np.random.Generator) -> str:
    """A present label of the organ group, sampled with probability proportional to its voxel count."""
    by_name = name_to_id(base.label_names)
    in_group = np.zeros(256, dtype=bool)
    in_group[base.label_ids(group)] = True
    counts = np.bincount(base.organ_map[in_group[base.organ_map]], minlength=256)
    members = [m for m in ORGAN_GROUPS.get(group, (group,)) if m in by_name and counts[by_name[m]] > 0]
    weights = np.array([counts[by_name[m]] for m in members], dtype=float)
    return members[int(rng.choice(len(members), p=weights / weights.sum()))]


# --------------------------------------------------------------------------------------------
# Specification: per-family samplers
# --------------------------------------------------------------------------------------------


@dataclass
class _Context:
    base: HealthyBase
    lesion_type: str
    phase: str
    rng: np.random.Generator
    host: _Host
    size_class: str | None
    noise_hu: float

    def size(self, fit: float) -> tuple[str, float]:
        """Size class and mean radius (mm), the class shrunk while the organ cannot hold it.

        ``fit`` scales the organ's largest inscribed radius into the largest lesion radius it
        holds (above 1 for lesions that may bulge out of the organ or be clipped by it).
        """
        weights = TYPE_SIZE_WEIGHTS[self.lesion_type]
        classes = [c for c in SIZE_CLASSES if c in weights]
        if self.size_class is not None:
            if self.size_class not in SIZE_CLASSES:
                raise ValueError(f"unknown size class {self.size_class!r}; valid: {list(SIZE_CLASSES)}")
            chosen = self.size_class
        else:
            p = np.array([weights[c] for c in classes])
            chosen = classes[int(self.rng.choice(len(classes), p=p / p.sum()))]
        min_radius = 0.6 * float(self.host.spacing_mm.min())
        cap = max(min(TYPE_MAX_RADIUS_MM[self.lesion_type], fit * self.host.max_depth_mm), min_radius)
        order = list(SIZE_CLASSES)
        while order.index(chosen) > 0 and SIZE_CLASSES[chosen][0] > cap:
            smaller = order[order.index(chosen) - 1]
            logger.debug(
                "%s: organ %s too small for %s lesions, using %s", self.lesion_type, self.host.label, chosen, smaller
            )
            chosen = smaller
        lo, hi = SIZE_CLASSES[chosen]
        lo, hi = min(lo, cap), min(hi, cap)
        radius = float(self.rng.uniform(lo, hi)) if hi > lo else hi
        return chosen, max(radius, min_radius)

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options: dict[str, float]) -> str:
        names = list(options)
        p = np.array([options[n] for n in names], dtype=float)
        return names[int(self.rng.choice(len(names), p=p / p.sum()))]

    def enhancement(self, enhancement_hu: float) -> str:
        """The report's enhancement for a tumor that gained ``enhancement_hu`` with contrast."""
        if self.phase == "plain":
            return "none"
        return "marked" if enhancement_hu >= _MARKED_ENHANCEMENT_HU else "mild"

    def tumor_hu(self) -> tuple[float, float]:
        """Absolute HU of a solid tumor in this phase and the enhancement (HU) it got."""
        enhancement = self.uniform(*_TUMOR_ENHANCEMENT_HU[self.phase]) if self.phase != "plain" else 0.0
        return self.uniform(*_TUMOR_PLAIN_HU) + enhancement, enhancement


@dataclass
class _Plan:
    """What a family sampler decides; :func:`sample_lesion_spec` adds the centre."""

    size_class: str
    radii_mm: tuple[float, float, float]
    attributes: dict[str, object]
    params: dict[str, float | str]
    invasion: bool
    placement: str  # how to choose the centre: depth / exophytic / surface / ridge / sinus / body / dependent
    min_depth_mm: float = 0.0
    max_depth_mm: float = float("inf")


def _radii(ctx: _Context, radius: float, round_p: float) -> tuple[tuple[float, float, float], bool]:
    """Semi-axes (mm) with geometric mean ``radius``: near-spherical with probability ``round_p``, else oval."""
    if ctx.chance(round_p):
        factors = ctx.rng.uniform(0.9, 1.1, size=3)
        is_round = True
    else:
        factors = np.array([1.0, ctx.uniform(0.7, 0.9), ctx.uniform(0.55, 0.85)])
        is_round = False
    factors = factors / np.prod(factors) ** (1.0 / 3.0)
    return tuple(float(radius * f) for f in factors), is_round


def _margin_params(ctx: _Context, margin: str, radius: float) -> dict[str, float]:
    """Geometry parameters that render a margin: edge width, lobulation, irregularity, spicules."""
    params = {"edge_mm": ctx.uniform(1.2, 2.0), "lobulation": 0.0, "deform": ctx.uniform(0.03, 0.08), "spicules": 0.0}
    if margin == "lobulated":
        params.update(edge_mm=ctx.uniform(1.5, 2.5), lobulation=ctx.uniform(0.2, 0.4), deform=ctx.uniform(0.05, 0.12))
    elif margin == "ill_defined":
        params.update(
            edge_mm=ctx.uniform(3.5, 6.0), deform=ctx.uniform(0.1, 0.22), irregularity=ctx.uniform(0.08, 0.16)
        )
    elif margin == "spiculated":
        params.update(
            edge_mm=ctx.uniform(1.5, 2.5),
            lobulation=ctx.uniform(0.0, 0.25),
            deform=ctx.uniform(0.06, 0.15),
            spicules=float(ctx.rng.integers(8, 19)),
            spicule_length_mm=float(np.clip(radius * ctx.uniform(0.7, 1.3), 5.0, 25.0)),
        )
    return params


def _attributes(
    ctx: "_Context",
    *,
    margin: str,
    params: dict[str, float | str],
    enhancement: str,
    texture: str,
    features: list[str],
    is_round: bool = False,
    shape: str | None = None,
) -> dict[str, object]:
    """Report attributes of a drawn lesion; density variation follows the drawn heterogeneity."""
    return dict(
        shape=shape or _shape_for(margin, params, is_round),
        margin=margin,
        enhancement=enhancement,
        texture=texture,
        density_variation=_variation(params, features, ctx.noise_hu),
        special_features=features,
    )


def _shape_for(margin: str, params: dict[str, float | str], is_round: bool) -> str:
    """The report's shape for what the parameters draw."""
    if margin == "spiculated" or (margin == "ill_defined" and float(params.get("deform", 0.0)) >= 0.15):
        return "irregular"
    if float(params.get("lobulation", 0.0)) >= 0.15:
        return "lobulated"
    return "round" if is_round else "oval"


def _variation(params: dict[str, float | str], features: list[str], noise_hu: float) -> str:
    """Heterogeneous when the drawn texture varies more than the scan's noise does, or has distinct parts."""
    heterogeneous = (
        any(f in features for f in ("necrosis", "calcification", "cystic_change", "air", "blastic"))
        or float(params.get("hetero_hu", 0.0)) >= max(8.0, 0.6 * noise_hu)
        or "core_frac" in params
    )
    return "heterogeneous" if heterogeneous else "homogeneous"


def _plan_cyst(ctx: _Context) -> _Plan:
    """Simple cysts (liver, kidney, pancreas): water HU, homogeneous, sharp, no enhancement."""
    t = ctx.lesion_type
    exophytic = t == "kidney_cyst" and ctx.chance(0.5)
    bulges = t == "pancreatic_cyst"
    size_class, radius = ctx.size(fit=1.6 if exophytic or bulges else 1.1)
    margin = "lobulated" if (t == "pancreatic_cyst" and ctx.chance(0.4)) else "well_defined"
    radii, is_round = _radii(ctx, radius, round_p=0.6)
    params = _margin_params(ctx, margin, radius)
    params.update(edge_mm=ctx.uniform(1.0, 1.5), deform=ctx.uniform(0.0, 0.05))
    params.update(
        growth="mass",
        hu=ctx.uniform(5.0, 15.0),
        hetero_hu=0.0,
        erode_mm=0.0 if exophytic else float(ctx.host.spacing_mm.min()),
        bulge_mm=radius if exophytic else (ctx.uniform(0.0, 0.5) * radius if bulges else 0.0),
    )
    features = ["exophytic"] if exophytic else []
    attrs = dict(
        shape=_shape_for(margin, params, is_round),
        margin=margin,
        enhancement="none",
        texture="cystic",
        density_variation="homogeneous",
        special_features=features,
    )
    if exophytic:
        return _Plan(size_class, radii, attrs, params, False, "exophytic", 0.2 * radius, 0.5 * radius)
    return _Plan(size_class, radii, attrs, params, False, "depth", min(radius, 0.8 * ctx.host.max_depth_mm))


def _plan_stone(ctx: _Context) -> _Plan:
    """Kidney stones (renal sinus / collecting system) and gallstones (lumen, possibly several, layering)."""
    size_class, radius = ctx.size(fit=1.0)
    radii, is_round = _radii(ctx, radius, round_p=0.7)
    params: dict[str, float | str] = dict(
        growth="stones",
        edge_mm=float(ctx.host.spacing_mm.min()) * ctx.uniform(1.0, 1.3),
        deform=ctx.uniform(0.02, 0.08),
        lobulation=0.0,
        spicules=0.0,
        hetero_hu=0.0,
        erode_mm=0.0,
        bulge_mm=0.0,
    )
    features: list[str] = []
    if ctx.lesion_type == "kidney_stone":
        params.update(hu=ctx.uniform(400.0, 1400.0), n_stones=1.0)
        placement = "sinus"
    else:
        n_stones = int(ctx.rng.choice([1, 1, 2, 3, 4, 5])) if radius < 8.0 else 1
        # Stones are denser than bile and sink to the dependent (posterior, supine) wall; several
        # dependent stones form a layer.
        dependent = ctx.chance(0.75)
        layering = dependent and n_stones > 1
        laminated = ctx.chance(0.4)
        params.update(
            hu=ctx.uniform(250.0, 800.0),
            n_stones=float(n_stones),
            dependent="yes" if dependent else "no",
            erode_mm=float(ctx.host.spacing_mm.min()),
        )
        if laminated:  # a denser calcified shell around a less dense core
            params.update(rim_mm=ctx.uniform(0.8, 1.5), rim_hu=ctx.uniform(700.0, 1100.0))
            params["hu"] = ctx.uniform(180.0, 350.0)
        if layering:
            features.append("layering")
        placement = "dependent" if dependent else "depth"
    attrs = dict(
        shape="round" if is_round else "oval",
        margin="well_defined",
        enhancement="none",
        texture="calcified",
        density_variation="heterogeneous" if "rim_hu" in params else "homogeneous",
        special_features=features,
    )
    return _Plan(size_class, radii, attrs, params, False, placement, min(radius, 0.8 * ctx.host.max_depth_mm))


def _plan_parenchymal_cancer(ctx: _Context) -> _Plan:
    """Liver (hepatocellular), kidney (renal cell) and pancreatic (ductal) cancer, relative to the organ's HU."""
    t = ctx.lesion_type
    organ_hu = _organ_reference_hu(ctx.base, ctx.host)
    exophytic = t == "kidney_cancer" and ctx.chance(0.6)
    fit = {"liver_cancer": 1.1, "kidney_cancer": 1.6 if exophytic else 1.3, "pancreatic_cancer": 1.8}[t]
    size_class, radius = ctx.size(fit=fit)
    features: list[str] = []
    params: dict[str, float | str] = {"growth": "mass", "organ_hu": organ_hu}
    if t == "liver_cancer":
        margin = ctx.pick({"well_defined": 0.35, "lobulated": 0.35, "ill_defined": 0.3})
        delta = {"plain": (-35.0, -12.0), "arterial": (20.0, 60.0), "venous": (-40.0, -15.0)}[ctx.phase]
        enhancement = "none" if ctx.phase == "plain" else "arterial_washout"
        if ctx.phase == "venous" and margin != "ill_defined" and ctx.chance(0.4):
            features.append("capsule")
            params.update(rim_mm=ctx.uniform(1.5, 3.0), rim_delta_hu=ctx.uniform(15.0, 30.0))
        necrosis_p = {"medium": 0.3, "large": 0.75}.get(size_class, 0.0)
        calcification_p = 0.1 if size_class == "large" else 0.0
        hetero = ctx.uniform(3.0, 7.0) if size_class in ("tiny", "small") else ctx.uniform(8.0, 16.0)
        invasion_p, erode = 0.1 if size_class == "large" else 0.0, True
        bulge = 0.0
    elif t == "kidney_cancer":
        margin = ctx.pick({"well_defined": 0.5, "lobulated": 0.3, "ill_defined": 0.2})
        clear_cell = ctx.chance(0.7)
        delta = {
            "plain": (-20.0, -5.0),
            "arterial": (-25.0, 25.0) if clear_cell else (-110.0, -60.0),
            "venous": (-70.0, -25.0) if clear_cell else (-130.0, -70.0),
        }[ctx.phase]
        enhancement = "none" if ctx.phase == "plain" else ("marked" if clear_cell else "mild")
        necrosis_p = {"small": 0.15, "medium": 0.45, "large": 0.8}.get(size_class, 0.0)
        calcification_p = 0.1
        hetero = ctx.uniform(15.0, 30.0) if (clear_cell and ctx.phase != "plain") else ctx.uniform(6.0, 12.0)
        invasion_p, erode = (0.2 if size_class == "large" else 0.0), not exophytic
        bulge = radius if exophytic else ctx.uniform(0.0, 0.3) * radius
        if exophytic:
            features.append("exophytic")
    else:  # pancreatic ductal adenocarcinoma: hypoattenuating, ill-defined
        margin = ctx.pick({"ill_defined": 0.85, "lobulated": 0.15})
        delta = {"plain": (-20.0, -5.0), "arterial": (-60.0, -30.0), "venous": (-50.0, -20.0)}[ctx.phase]
        enhancement = "none" if ctx.phase == "plain" else "mild"
        necrosis_p = 0.15 if size_class in ("medium", "large") else 0.0
        calcification_p = 0.0
        hetero = ctx.uniform(5.0, 12.0)
        invasion_p, erode = (0.35 if size_class in ("medium", "large") else 0.1), False
        bulge = ctx.uniform(0.2, 0.6) * radius
    radii, is_round = _radii(ctx, radius, round_p=0.4)
    params.update(_margin_params(ctx, margin, radius))
    params.update(
        hu=max(organ_hu + ctx.uniform(*delta), 20.0),
        hetero_hu=hetero,
        hetero_mm=ctx.uniform(3.0, 7.0),
        erode_mm=float(ctx.host.spacing_mm.min()) if erode else 0.0,
        bulge_mm=bulge,
    )
    if ctx.chance(necrosis_p):
        features.append("necrosis")
        params.update(necrosis_frac=ctx.uniform(0.3, 0.6), necrosis_hu=ctx.uniform(10.0, 25.0))
    if ctx.chance(calcification_p):
        features.append("calcification")
        params.update(calcifications=float(ctx.rng.integers(1, 4)), calcification_hu=ctx.uniform(300.0, 700.0))
    invasion = ctx.chance(invasion_p)
    if invasion:
        params["invasion_mm"] = ctx.uniform(4.0, 10.0)
    attrs = _attributes(
        ctx, margin=margin, params=params, enhancement=enhancement, texture="solid", features=features,
        is_round=is_round,
    )
    if exophytic:
        return _Plan(size_class, radii, attrs, params, invasion, "exophytic", 0.2 * radius, 0.5 * radius)
    return _Plan(size_class, radii, attrs, params, invasion, "depth", min(radius, 0.8 * ctx.host.max_depth_mm))


#: Hollow-organ cancers: probabilities of (wall thickening, intraluminal mass), of a circumferential
#: (vs focal) thickening, wall thickness range (mm), and the chance of invading a neighbour.
_HOLLOW_MODELS: dict[str, dict[str, object]] = {
    "gallbladder_cancer": dict(wall_p=0.65, circumferential_p=0.25, thickness=(4.0, 12.0), invasion_p=0.3),
    "bladder_cancer": dict(wall_p=0.4, circumferential_p=0.1, thickness=(4.0, 12.0), invasion_p=0.15),
    "esophageal_cancer": dict(wall_p=1.0, circumferential_p=0.6, thickness=(5.0, 14.0), invasion_p=0.25),
    "gastric_cancer": dict(wall_p=0.75, circumferential_p=0.2, thickness=(8.0, 18.0), invasion_p=0.2),
    "colorectal_cancer": dict(wall_p=0.75, circumferential_p=0.65, thickness=(6.0, 16.0), invasion_p=0.2),
}


def _plan_hollow_cancer(ctx: _Context) -> _Plan:
    """Wall thickening (focal or circumferential, over a segment) or a polypoid intraluminal mass."""
    model = _HOLLOW_MODELS[ctx.lesion_type]
    wall = ctx.chance(float(model["wall_p"]))
    hu, enhancement_hu = ctx.tumor_hu()
    enhancement = ctx.enhancement(enhancement_hu)
    invasion = ctx.chance(float(model["invasion_p"]))
    if wall:
        # The radius is the thickened segment's half-length, bounded by the organ's extent, not its depth.
        extent = float(np.max(np.array(ctx.host.mask.shape) * ctx.host.coarse_spacing_mm)) / 2.0
        size_class, radius = ctx.size(fit=max(extent, 1.0) / max(ctx.host.max_depth_mm, 1e-3))
        # A few-mm lesion of a hollow organ is a small polyp, not a thickened segment.
        wall = size_class != "tiny"
    else:
        size_class, radius = ctx.size(fit=1.2)
    params: dict[str, float | str]
    if wall:
        circumferential = ctx.chance(float(model["circumferential_p"]))
        if circumferential and not (_medial_axis(ctx.host) & (ctx.host.depth_mm <= radius / 1.3)).any():
            circumferential = False  # the lumen is wider than the segment here: a focal thickening
        margin = ctx.pick({"ill_defined": 0.5, "well_defined": 0.3, "lobulated": 0.2})
        params = dict(growth="wall", **_margin_params(ctx, margin, radius))
        params.update(
            extent="circumferential" if circumferential else "focal",
            thickness_mm=ctx.uniform(*model["thickness"]),
            lumen_keep=ctx.uniform(0.6, 0.85),
            spicules=0.0,
            bulge_mm=ctx.uniform(1.0, 4.0),
        )
        features = ["wall_thickening", "luminal_narrowing"] if circumferential else ["wall_thickening"]
        radii = (radius, radius * ctx.uniform(0.8, 1.0), radius * ctx.uniform(0.7, 1.0))
        shape = "irregular"
        # A circumferential segment is centred on the lumen's medial axis where the lumen radius is
        # below the segment's radius, so the segment rings the whole wall.
        plan_args = ("ridge", 0.0, radius / 1.3) if circumferential else ("surface", 0.0, float("inf"))
    else:
        margin = ctx.pick({"lobulated": 0.5, "well_defined": 0.3, "ill_defined": 0.2})
        radii, is_round = _radii(ctx, radius, round_p=0.4)
        params = dict(growth="intraluminal", **_margin_params(ctx, margin, radius))
        # The mass's centre sits this far inside the wall (mm), so it is attached to the wall and
        # protrudes into the lumen.
        attach = ctx.uniform(0.3, 0.55) * min(radii)
        params.update(attach_depth_mm=attach, bulge_mm=0.0)
        features = ["intraluminal_mass"]
        shape = _shape_for(margin, params, is_round)
        plan_args = ("depth", 0.6 * attach, attach + 0.5 * float(ctx.host.coarse_spacing_mm.max()))
    params.update(
        hu=hu,
        hetero_hu=ctx.uniform(4.0, 10.0),
        hetero_mm=ctx.uniform(2.5, 5.0),
        erode_mm=0.0,
        edge_mm=min(float(params["edge_mm"]), 3.0),
    )
    if ctx.lesion_type in ("colorectal_cancer", "gastric_cancer", "bladder_cancer") and ctx.chance(0.08):
        features.append("calcification")
        params.update(calcifications=float(ctx.rng.integers(1, 4)), calcification_hu=ctx.uniform(250.0, 600.0))
    if invasion:
        params["invasion_mm"] = ctx.uniform(3.0, 8.0)
    attrs = _attributes(
        ctx, margin=margin, params=params, enhancement=enhancement, texture="solid", features=features, shape=shape
    )
    return _Plan(size_class, tuple(float(r) for r in radii), attrs, params, invasion, *plan_args)


def _plan_lung_cancer(ctx: _Context) -> _Plan:
    """Solid, part-solid or ground-glass nodules and masses, lobulated or spiculated, against aerated lung."""
    size_class, radius = ctx.size(fit=1.2)
    texture = ctx.pick({"solid": 0.6, "part_solid": 0.25, "ground_glass": 0.15})
    if texture == "ground_glass" and radius > 20.0:
        texture = "part_solid"
    hu, enhancement_hu = ctx.tumor_hu()
    features: list[str] = []
    params: dict[str, float | str] = {"growth": "mass"}
    if texture == "ground_glass":
        margin = ctx.pick({"ill_defined": 0.6, "well_defined": 0.4})
        params.update(_margin_params(ctx, margin, radius))
        params.update(
            hu=ctx.uniform(-650.0, -400.0), hetero_hu=ctx.uniform(30.0, 60.0), hetero_mm=ctx.uniform(1.5, 3.0)
        )
        enhancement = "none"
    else:
        margin = ctx.pick({"spiculated": 0.45, "lobulated": 0.3, "ill_defined": 0.1, "well_defined": 0.15})
        params.update(_margin_params(ctx, margin, radius))
        params.update(hu=hu, hetero_hu=ctx.uniform(5.0, 12.0), hetero_mm=ctx.uniform(2.0, 5.0))
        enhancement = ctx.enhancement(enhancement_hu)
        if texture == "part_solid":
            # A ground-glass halo around an irregular solid core.
            params.update(core_frac=ctx.uniform(0.35, 0.7), core_hu=hu, hu=ctx.uniform(-600.0, -350.0))
            params["hetero_hu"] = ctx.uniform(25.0, 50.0)
        elif size_class == "large":
            if ctx.chance(0.3):
                features.append("necrosis")
                params.update(necrosis_frac=ctx.uniform(0.3, 0.5), necrosis_hu=ctx.uniform(10.0, 25.0))
            if ctx.chance(0.15):
                features.append("air")
                params.update(cavity_frac=ctx.uniform(0.2, 0.4))
        if texture == "solid" and ctx.chance(0.05):
            features.append("calcification")
            params.update(calcifications=float(ctx.rng.integers(1, 3)), calcification_hu=ctx.uniform(300.0, 800.0))
    invasion = texture == "solid" and size_class == "large" and ctx.chance(0.25)
    if invasion:
        params["invasion_mm"] = ctx.uniform(5.0, 12.0)
    params.update(erode_mm=0.0, bulge_mm=0.0)
    radii, is_round = _radii(ctx, radius, round_p=0.45)
    attrs = _attributes(
        ctx, margin=margin, params=params, enhancement=enhancement, texture=texture, features=features,
        is_round=is_round,
    )
    return _Plan(size_class, radii, attrs, params, invasion, "depth", min(radius, 0.8 * ctx.host.max_depth_mm))


def _plan_bone_metastasis(ctx: _Context) -> _Plan:
    """Lytic (soft tissue replacing bone, may breach the cortex) or blastic (sclerotic) vertebral-body focus."""
    size_class, radius = ctx.size(fit=1.0)
    lytic = ctx.chance(0.6)
    features = ["lytic" if lytic else "blastic"]
    margin = ctx.pick({"ill_defined": 0.5 if lytic else 0.6, "well_defined": 0.5 if lytic else 0.4})
    params: dict[str, float | str] = {"growth": "bone"}
    params.update(_margin_params(ctx, margin, radius))
    invasion = False
    if lytic:
        hu, enhancement_hu = ctx.tumor_hu()
        hu -= ctx.uniform(0.0, 15.0)
        enhancement = ctx.enhancement(enhancement_hu)
        params.update(hu=hu, hetero_hu=ctx.uniform(4.0, 10.0), hetero_mm=ctx.uniform(2.0, 4.0))
        if size_class != "tiny" and ctx.chance(0.35):
            features.append("cortical_breach")
            invasion = True
            params["invasion_mm"] = ctx.uniform(3.0, 7.0)
        texture = "solid"
    else:
        params.update(
            hu=ctx.uniform(600.0, 1200.0), hetero_hu=ctx.uniform(80.0, 180.0), hetero_mm=ctx.uniform(1.5, 3.0)
        )
        enhancement = "none"
        texture = "calcified"
    params.update(erode_mm=0.0 if invasion else float(ctx.host.spacing_mm.min()), bulge_mm=0.0)
    radii, is_round = _radii(ctx, radius, round_p=0.5)
    attrs = _attributes(
        ctx, margin=margin, params=params, enhancement=enhancement, texture=texture, features=features,
        is_round=is_round,
    )
    return _Plan(size_class, radii, attrs, params, invasion, "body", min(0.8 * radius, 0.8 * ctx.host.max_depth_mm))


_PLANNERS: dict[str, Callable[[_Context], _Plan]] = {
    "lung_cancer": _plan_lung_cancer,
    "liver_cancer": _plan_parenchymal_cancer,
    "kidney_cancer": _plan_parenchymal_cancer,
    "pancreatic_cancer": _plan_parenchymal_cancer,
    "gallbladder_cancer": _plan_hollow_cancer,
    "bladder_cancer": _plan_hollow_cancer,
    "esophageal_cancer": _plan_hollow_cancer,
    "gastric_cancer": _plan_hollow_cancer,
    "colorectal_cancer": _plan_hollow_cancer,
    "bone_metastasis": _plan_bone_metastasis,
    "liver_cyst": _plan_cyst,
    "kidney_cyst": _plan_cyst,
    "pancreatic_cyst": _plan_cyst,
    "gallstone": _plan_stone,
    "kidney_stone": _plan_stone,
}


# --------------------------------------------------------------------------------------------
# Placement: choosing the centre on the host's coarse grid
# --------------------------------------------------------------------------------------------


def _world_axis(base: HealthyBase, host: _Host, axis: int) -> np.ndarray:
    """World coordinate (mm) along RAS axis ``axis`` of every coarse grid voxel."""
    grids = np.meshgrid(*[np.arange(n) for n in host.mask.shape], indexing="ij")
    full = [host.origin[i] + grids[i] * host.stride for i in range(3)]
    row = np.asarray(base.affine, dtype=float)[axis]
    return row[0] * full[0] + row[1] * full[1] + row[2] * full[2] + row[3]


def _candidates(base: HealthyBase, host: _Host, plan: _Plan, occupied: np.ndarray | None) -> np.ndarray:
    """Coarse-grid voxels where the centre may go, per the plan's placement rule."""
    depth, mask = host.depth_mm, host.mask
    cell = float(host.coarse_spacing_mm.max())
    if plan.placement == "surface":
        cand = mask & (depth <= cell * 1.01)
    elif plan.placement == "ridge":
        # Medial points of a tube: local maxima of the depth, so a ball around them rings the wall.
        ridge = _medial_axis(host)
        narrow = ridge & (depth <= plan.max_depth_mm)
        cand = narrow if narrow.any() else ridge
    elif plan.placement == "sinus":
        cand = _renal_sinus_side(host)
    elif plan.placement == "body":
        y = _world_axis(base, host, 1)
        ys = y[mask]
        cand = mask & (y >= ys.max() - 0.45 * (ys.max() - ys.min())) & (depth >= plan.min_depth_mm)
        if not cand.any():
            cand = mask & (y >= ys.max() - 0.45 * (ys.max() - ys.min()))
    elif plan.placement == "dependent":
        fits = mask & (depth >= plan.min_depth_mm)
        fits = fits if fits.any() else mask & (depth >= 0.8 * host.max_depth_mm)
        y = _world_axis(base, host, 1)
        cand = fits & (y <= y[fits].min() + max(cell, 0.25 * (y[fits].max() - y[fits].min())))
    else:  # "depth" / "exophytic": a depth band
        cand = mask & (depth >= plan.min_depth_mm) & (depth <= plan.max_depth_mm)
        if not cand.any() and np.isfinite(plan.max_depth_mm):  # attached to the wall: stay shallow
            cand = mask & (depth <= max(plan.max_depth_mm, cell * 1.01))
        if not cand.any():
            cand = mask & (depth >= 0.8 * host.max_depth_mm)
    if occupied is not None:
        box = tuple(slice(o, o + n * host.stride, host.stride) for o, n in zip(host.origin, mask.shape))
        occ = occupied[box]
        occ = np.pad(occ, [(0, n - m) for n, m in zip(mask.shape, occ.shape)])
        if occ.any():
            clearance = ndimage.distance_transform_edt(~occ, sampling=host.coarse_spacing_mm)
            need = max(0.5 * float(np.mean(plan.radii_mm)), cell)
            free = cand & (clearance > need)
            cand = free if free.any() else cand & ~occ
    return cand


def _medial_axis(host: _Host) -> np.ndarray:
    """Medial points of a tubular organ: local maxima of the depth, so a ball around one rings the wall."""
    depth = host.depth_mm
    ridge = host.mask & (depth >= ndimage.maximum_filter(depth, size=3) - 1e-3)
    return ridge & (depth >= min(2.0 * float(host.coarse_spacing_mm.max()), 0.5 * host.max_depth_mm))


def _renal_sinus_side(host: _Host) -> np.ndarray:
    """Kidney voxels bordering the renal sinus (the hilar concavity), where calculi sit.

    The sinus is what a closing of the kidney adds; without one, the kidney's central part.
    """
    cell = float(host.coarse_spacing_mm.min())
    k = max(1, int(np.ceil(10.0 / cell)))
    padded = np.pad(host.mask, k)
    closed = ndimage.binary_closing(padded, iterations=k)
    closed = ndimage.binary_fill_holes(closed)[k:-k, k:-k, k:-k]
    sinus = closed & ~host.mask
    if sinus.sum() >= 2:
        near = host.mask & ndimage.binary_dilation(sinus, iterations=1)
        if near.any():
            return near
    return host.mask & (host.depth_mm >= 0.5 * host.max_depth_mm)


def sample_lesion_spec(
    lesion_type: str,
    base: HealthyBase,
    phase: str,
    rng: np.random.Generator,
    *,
    size_class: str | None = None,
    occupied: np.ndarray | None = None,
) -> LesionSpec:
    """Decide a lesion of ``lesion_type`` for ``base``: host label, centre, size, attributes, intensity model.

    Args:
        lesion_type: key of :data:`modeling_pasta.report.LESION_TYPES`.
        base: the healthy base (its organ map places the lesion; its CT gives the organ's own HU).
        phase: contrast phase of the scan (``plain`` / ``arterial`` / ``venous``); sets the
            lesion's HU relative to its organ and the ``enhancement`` attribute.
        rng: the only source of randomness.
        size_class: force a key of :data:`SIZE_CLASSES` (shrunk when the organ cannot hold it).
        occupied: voxels of earlier lesions to keep clear of.

    Raises:
        ValueError: unknown lesion type, phase or size class.
        datasets_pasta.bases.BaseError: the base lacks the type's organ (the message names it and
            the organs available) or no position in it is free.
    """
    if lesion_type not in LESION_TYPES:
        raise ValueError(f"unknown lesion type {lesion_type!r}; valid types: {', '.join(LESION_TYPES)}")
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; valid phases: {list(PHASES)}")
    if size_class is not None and size_class not in SIZE_CLASSES:
        raise ValueError(f"unknown size class {size_class!r}; valid: {list(SIZE_CLASSES)}")
    group = LESION_TYPES[lesion_type].organ
    base.require_organ(group)
    label = _choose_host_label(base, group, rng)
    host = _host_geometry(base, label)
    noise_hu, noise_sigma_mm = _scan_texture(base)
    ctx = _Context(base, lesion_type, phase, rng, host, size_class, noise_hu)
    plan = _PLANNERS[lesion_type](ctx)
    cand = _candidates(base, host, plan, occupied)
    idx = np.argwhere(cand)
    if len(idx) == 0:
        raise BaseError(
            f"no free position for a {lesion_type} in {label} of base {base.base_id!r} "
            f"({int(host.mask.sum())} coarse voxels, placement {plan.placement!r})"
        )
    pick = idx[int(rng.integers(len(idx)))]
    chosen = host.to_full(pick)
    center = tuple(float(c + rng.uniform(-0.4, 0.4)) for c in chosen)
    radii = np.array(plan.radii_mm, dtype=float)
    if plan.placement == "ridge":  # the segment must reach past the local lumen radius to ring the wall
        need = 1.3 * float(host.depth_mm[tuple(pick)]) + float(host.coarse_spacing_mm.max())
        radii = radii * max(1.0, need / radii.min())
    params = {k: (v if isinstance(v, str) else float(v)) for k, v in plan.params.items()}
    params.update(noise_hu=noise_hu, noise_sigma_mm=noise_sigma_mm)
    spec = LesionSpec(
        lesion_type=lesion_type,
        organ_label=label,
        center_vox=center,
        radii_mm=tuple(round(float(r), 3) for r in radii),
        size_class=plan.size_class,
        invasion=bool(plan.invasion),
        params=params,
        **plan.attributes,
    )
    _check_spec(spec)
    return spec


def _check_spec(spec: LesionSpec) -> None:
    """The attributes are schema values (a guard against a sampler drifting from the schema)."""
    for value, allowed in (
        (spec.shape, SHAPES),
        (spec.margin, MARGINS),
        (spec.enhancement, ENHANCEMENTS),
        (spec.texture, TEXTURES),
        (spec.density_variation, DENSITY_VARIATIONS),
    ):
        if value not in allowed:
            raise ValueError(f"{spec.lesion_type}: attribute value {value!r} is not one of {list(allowed)}")
    unknown = [f for f in spec.special_features if f not in SPECIAL_FEATURES]
    if unknown:
        raise ValueError(f"{spec.lesion_type}: unknown special features {unknown}")
    if spec.params.get("growth") not in GROWTH_PATTERNS:
        raise ValueError(f"{spec.lesion_type}: growth {spec.params.get('growth')!r} is not one of {GROWTH_PATTERNS}")


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _smooth_noise(shape: tuple[int, ...], sigma_vox: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise: Gaussian-filtered white noise, rescaled to unit standard deviation."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=np.maximum(sigma_vox, 0.3))
    std = float(field_.std())
    return field_ / std if std > 0 else field_


def _deformed_ellipsoid(
    offsets_mm: np.ndarray, radii_mm: np.ndarray, params: dict[str, float | str], rng: np.random.Generator
) -> np.ndarray:
    """Normalised radius of a rotated, deformed, lobulated ellipsoid (<= 1 inside) at each offset (mm).

    The surface radius along a direction u (ellipsoid frame) is 1 + a low-order polynomial of u
    (random smooth deformation) + Gaussian bumps on the sphere around a few lobule directions.
    """
    rot = _random_rotation(rng).astype(np.float32)
    q = (offsets_mm @ rot) / np.asarray(radii_mm, dtype=np.float32)
    rho = np.sqrt((q**2).sum(axis=-1))
    u = q / np.maximum(rho, 1e-6)[..., None]
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    basis = (
        x, y, z,
        x * y, y * z, x * z, x * x - y * y, 2 * z * z - x * x - y * y,
        x * y * z, x * x * x, y * y * y, z * z * z,
    )
    coeffs = rng.normal(0.0, float(params.get("deform", 0.0)), size=len(basis))
    surface = np.ones_like(rho)
    for c, b in zip(coeffs, basis):
        surface += np.float32(c) * b
    lobulation = float(params.get("lobulation", 0.0))
    if lobulation > 0:
        n_lobes = int(rng.integers(3, 8))
        dirs = _unit_vectors(rng, n_lobes).astype(np.float32)
        amps = rng.uniform(0.5, 1.0, size=n_lobes) * lobulation
        widths = rng.uniform(0.08, 0.2, size=n_lobes)
        surface -= np.float32(0.35 * lobulation)
        for d, a, w in zip(dirs, amps, widths):
            surface += np.float32(a) * np.exp((u @ d - 1.0) / np.float32(w))
    return rho / np.clip(surface, 0.3, _max_surface(params))


def _max_surface(params: dict[str, float | str]) -> float:
    """Largest surface radius of :func:`_deformed_ellipsoid` (in units of the semi-axes)."""
    return 1.0 + 2.0 * float(params.get("deform", 0.0)) + float(params.get("lobulation", 0.0))


def _spicules(offsets_mm: np.ndarray, rho_n: np.ndarray, params: dict[str, float | str], spacing: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """Thin radial spikes from the surface, tapering over ``spicule_length_mm`` (at least about a voxel wide)."""
    n = int(params.get("spicules", 0.0))
    out = np.zeros(rho_n.shape, dtype=bool)
    if n == 0:
        return out
    length = float(params["spicule_length_mm"])
    dist = np.sqrt((offsets_mm**2).sum(axis=-1))
    unit = offsets_mm / np.maximum(dist, 1e-6)[..., None]
    # Surface distance along each voxel's own ray: |x| / rho_n (rho_n scales linearly along a ray).
    surface_mm = dist / np.maximum(rho_n, 1e-6)
    # Strands a few mm thick at the surface, thinning towards the tip; never below ~half a voxel so they render.
    base_width = max(0.1 * length, 0.6 * float(spacing.max()))
    tip_width = 0.45 * float(spacing.max())
    for d in _unit_vectors(rng, n).astype(np.float32):
        along = offsets_mm @ d
        perp = np.sqrt(np.maximum(dist**2 - along**2, 0.0))
        spike_len = length * float(rng.uniform(0.5, 1.0))
        beyond = along - surface_mm * np.clip(unit @ d, 0.0, 1.0)
        frac = np.clip(beyond / spike_len, 0.0, 1.0)
        width = base_width + (tip_width - base_width) * frac
        out |= (along > 0) & (beyond >= 0) & (beyond <= spike_len) & (perp <= width)
    return out


def _limit_invasion(lesion: np.ndarray, organs: np.ndarray, host: np.ndarray, depth_out: np.ndarray,
                    invasion_mm: float, base: HealthyBase) -> np.ndarray:
    """Trim the invaded part until the host's organ group holds more of the lesion than any other organ."""
    group_of = {i: organ_group(n) or n for i, n in base.label_names.items()}
    host_group = group_of[int(organs[host][0])]
    for scale in (1.0, 0.6, 0.3, 0.0):
        kept = lesion & (host | (organs == 0) | (depth_out <= invasion_mm * scale))
        ids, counts = np.unique(organs[kept], return_counts=True)
        per_group: dict[str, int] = {}
        for i, c in zip(ids, counts):
            if i:
                per_group[group_of.get(int(i), str(i))] = per_group.get(group_of.get(int(i), str(i)), 0) + int(c)
        own = per_group.pop(host_group, 0)
        if own > max(per_group.values(), default=0):
            return kept
    return kept


def _keep_main_component(mask: np.ndarray, center_local: np.ndarray) -> np.ndarray:
    """The connected component holding (or nearest to) the centre; drops fragments left by clipping."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    c = tuple(np.clip(np.round(center_local).astype(int), 0, np.array(mask.shape) - 1))
    if labels[c]:
        keep = labels[c]
    else:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        keep = int(np.argmax(sizes)) + 1
    return labels == keep


def _reach_mm(spec: LesionSpec) -> float:
    """How far from its centre (mm) a lesion and its blending edge can extend.

    Every growth pattern stays inside its (deformed) ellipsoid or, for stones, inside the
    cluster radius; clipping to the organ only removes voxels.
    """
    p = spec.params
    r = max(spec.radii_mm)
    if p["growth"] == "stones":
        reach = r * (2.0 + 2.5 * (float(p.get("n_stones", 1.0)) - 1.0)) * _max_surface(p)
    else:
        reach = r * _max_surface(p) / (1.0 - 2.0 * float(p.get("irregularity", 0.0)))
        reach += float(p.get("spicule_length_mm", 0.0)) if float(p.get("spicules", 0.0)) else 0.0
    return reach + float(p.get("edge_mm", DEFAULT_EDGE_MM))


def _crop_box(center: np.ndarray, reach_mm: float, spacing: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    half = np.ceil(reach_mm / spacing).astype(int) + 2
    lo = np.maximum(np.floor(center).astype(int) - half, 0)
    hi = np.minimum(np.floor(center).astype(int) + half + 1, np.array(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _wall_shape(rho_seg: np.ndarray, host: np.ndarray, depth_in: np.ndarray, depth_out: np.ndarray,
                params: dict[str, float | str], spacing: np.ndarray, rng: np.random.Generator,
                out_mm: float) -> np.ndarray:
    """A shell inside the organ boundary (and a thinner band outside it) over a segment, tapering at its ends."""
    taper = np.sqrt(np.clip(1.0 - rho_seg**4, 0.0, 1.0))
    # A lumpy inner contour; lobulated margins lumpier.
    wobble = 1.0 + (0.25 + float(params.get("lobulation", 0.0))) * _smooth_noise(rho_seg.shape, 6.0 / spacing, rng)
    half_voxel = 0.5 * float(spacing.min())
    thickness = float(params["thickness_mm"]) * (0.3 + 0.7 * taper) * wobble
    # Keep a (narrowed) lumen: the thickening stops short of the lumen's local radius.
    window = np.maximum(3, np.round(2.0 * float(params["thickness_mm"]) / spacing).astype(int) | 1)
    lumen_radius = ndimage.maximum_filter(np.where(host, depth_in, 0.0), size=tuple(window))
    thickness = np.minimum(thickness, float(params.get("lumen_keep", 0.75)) * lumen_radius)
    inner = host & (depth_in - half_voxel <= thickness) & (rho_seg <= 1.0)
    # Growth through the wall is patchy: about half of the segment's outer surface.
    patches = _smooth_noise(rho_seg.shape, 8.0 / spacing, rng) > 0.0
    outer = ~host & patches & (depth_out - half_voxel <= out_mm * taper * wobble) & (rho_seg <= 1.0)
    return inner | outer


def _stone_shapes(offsets_mm: np.ndarray, spec: LesionSpec, lumen_depth: np.ndarray, center_local: np.ndarray,
                  spacing: np.ndarray, world_y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normalised radius of the nearest of ``n_stones`` compact blobs placed in the lumen (min over stones)."""
    n = int(spec.params.get("n_stones", 1.0))
    r0 = float(np.mean(spec.radii_mm))
    rho = np.full(offsets_mm.shape[:-1], np.inf, dtype=np.float32)
    placed: list[tuple[np.ndarray, float]] = []
    dependent = spec.params.get("dependent") == "yes"
    dependent_y = float(world_y[tuple(np.clip(np.round(center_local).astype(int), 0, np.array(world_y.shape) - 1))])
    for k in range(n):
        r = r0 if k == 0 else r0 * float(rng.uniform(0.6, 1.0))
        radii = np.array(spec.radii_mm) * (r / r0)
        if k == 0:
            centre_mm = np.zeros(3, dtype=np.float32)
        else:
            dist = np.sqrt((offsets_mm**2).sum(axis=-1))
            ok = (lumen_depth >= 0.8 * r) & (dist <= r0 * (1.0 + 2.5 * (n - 1)))
            if dependent:
                ok &= world_y <= dependent_y + 0.6 * r0
            for c, rc in placed:
                ok &= np.sqrt(((offsets_mm - c) ** 2).sum(axis=-1)) >= 0.95 * (r + rc)
            idx = np.argwhere(ok)
            if len(idx) == 0:
                break
            centre_mm = offsets_mm[tuple(idx[int(rng.integers(len(idx)))])]
        placed.append((centre_mm, r))
        rho = np.minimum(rho, _deformed_ellipsoid(offsets_mm - centre_mm, radii, spec.params, rng))
    return rho


def _signed_distance_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to the mask's surface, positive inside; the surface lies half a voxel out."""
    half = 0.5 * float(spacing.min())
    inside = ndimage.distance_transform_edt(mask, sampling=spacing) - half
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing) - half
    return np.where(mask, inside, -outside).astype(np.float32)


#: Blending ramp (mm) of a lesion whose model sets none (also corpus or labeled lesions).
DEFAULT_EDGE_MM = 2.0


def edge_width_mm(spacing_mm, edge_mm: float = DEFAULT_EDGE_MM) -> float:
    """The blending ramp actually used: ``edge_mm``, but at least 1.25 voxels."""
    return max(float(edge_mm), 1.25 * float(np.min(spacing_mm)))


def blend_weight(
    lesion: np.ndarray, spacing_mm, edge_mm: float, *, signed_mm: np.ndarray | None = None
) -> np.ndarray:
    """The weight a lesion is blended into the CT with: 1 in the core, a ramp across the boundary.

    The ramp is ``edge_mm`` wide (see :func:`edge_width_mm`), centred a quarter voxel
    outside the surface: voxels of ``lesion`` get at least ~0.6 (1 for sharp margins), voxels
    outside less than 0.5, so the mask is exactly where the lesion dominates and sharp lesions
    keep their HU. The learned refiner (:mod:`datasets_pasta.synthesis`) adds its residual with
    the same weight, so it too touches only the lesion and its edge.

    Args:
        lesion: the lesion's voxels (bool).
        spacing_mm: voxel size (mm), 3 values.
        edge_mm: width of the ramp (mm).
        signed_mm: the mask's signed distance (mm, positive inside) when already computed.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float32)
    signed = _signed_distance_mm(lesion, spacing) if signed_mm is None else signed_mm
    return np.clip(0.5 + (signed + 0.25 * float(spacing.min())) / edge_mm, 0.0, 1.0).astype(np.float32)


def _intensity(spec: LesionSpec, lesion: np.ndarray, rho_n: np.ndarray, depth_lesion_mm: np.ndarray,
               base: HealthyBase, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The lesion's HU field over the crop.

    Target HU, heterogeneity, then the parts that replace it (solid core, necrosis, cavity, rim,
    calcifications), then the scan's noise texture.
    """
    p = spec.params
    shape = lesion.shape
    hu = np.full(shape, float(p["hu"]), dtype=np.float32)
    hetero = float(p.get("hetero_hu", 0.0))
    if hetero > 0:
        hu += hetero * _smooth_noise(shape, float(p.get("hetero_mm", 4.0)) / spacing, rng)
    blob = 0.15 * _smooth_noise(shape, 4.0 / spacing, rng)  # irregular inner boundaries
    if "core_frac" in p:  # part-solid: an irregular solid core in a ground-glass halo
        core_w = np.clip((float(p["core_frac"]) - rho_n + blob) / 0.1 + 0.5, 0.0, 1.0)
        core_hu = float(p["core_hu"]) + 0.3 * hetero * _smooth_noise(shape, 3.0 / spacing, rng)
        hu = hu + core_w * (core_hu - hu)
    if "necrosis_frac" in p:
        nec_w = np.clip((float(p["necrosis_frac"]) - rho_n + blob) / 0.12 + 0.5, 0.0, 1.0)
        hu = hu + nec_w * (float(p["necrosis_hu"]) - hu)
    if "cavity_frac" in p:
        cav_w = np.clip((float(p["cavity_frac"]) - rho_n + blob) / 0.08 + 0.5, 0.0, 1.0)
        hu = hu + cav_w * (-950.0 - hu)
    if "rim_mm" in p:
        rim_w = np.clip((float(p["rim_mm"]) - depth_lesion_mm) / max(float(spacing.min()), 0.5) + 0.5, 0.0, 1.0)
        target = float(p["rim_hu"]) if "rim_hu" in p else float(p["hu"]) + float(p["rim_delta_hu"])
        hu = hu + rim_w * lesion * (target - hu)
    n_calc = int(p.get("calcifications", 0.0))
    if n_calc:
        inner = np.argwhere(lesion & (depth_lesion_mm >= float(spacing.min())))
        inner = inner if len(inner) else np.argwhere(lesion)
        grid = np.indices(shape, dtype=np.float32)
        for _ in range(n_calc):
            c = inner[int(rng.integers(len(inner)))]
            r_mm = float(rng.uniform(1.0, 3.0))
            d2 = sum(((grid[i] - c[i]) * spacing[i]) ** 2 for i in range(3))
            hu = np.where(d2 <= max(r_mm, 0.5 * float(spacing.min())) ** 2, float(p["calcification_hu"]), hu)
    # The scan's own noise texture (amplitude and correlation measured by _scan_texture).
    noise_hu = float(p.get("noise_hu", base.noise_hu))
    hu += noise_hu * _smooth_noise(shape, float(p.get("noise_sigma_mm", 0.6 * float(spacing.mean()))) / spacing, rng)
    return hu


def insert_lesion(
    ct_hu: np.ndarray,
    base: HealthyBase,
    spec: LesionSpec,
    rng: np.random.Generator,
    *,
    occupied: np.ndarray | None = None,
) -> SynthesizedLesion:
    """Draw ``spec`` into ``ct_hu`` (float HU, modified in place, only in a box around the lesion).

    Args:
        ct_hu: float working copy of ``base.ct_hu`` (HU); earlier lesions may already be in it.
        base: the base the spec was sampled for (its organ map clips the lesion).
        spec: from :func:`sample_lesion_spec`.
        rng: the only source of randomness (shape perturbation, texture).
        occupied: voxels of earlier lesions; they are neither covered nor blended into.

    Returns:
        The spec and the lesion's voxels: where the blending weight is at least 0.5 (non-empty).

    Raises:
        ValueError: ``ct_hu`` is not a float array of the base's shape.
        datasets_pasta.bases.BaseError: the spec's organ is not in the base, or no voxel of the
            lesion survives clipping (the CT is then left unchanged).
    """
    if ct_hu.shape != base.ct_hu.shape or not np.issubdtype(ct_hu.dtype, np.floating):
        raise ValueError(
            f"ct_hu must be a float working copy of the base CT with shape {base.ct_hu.shape}, "
            f"got {ct_hu.dtype} {ct_hu.shape}"
        )
    host_id = name_to_id(base.label_names).get(spec.organ_label)
    if host_id is None:
        base.require_organ(spec.organ_label)
    p = spec.params
    growth = p["growth"]
    spacing = np.array(base.spacing_mm, dtype=np.float32)
    center = np.array(spec.center_vox, dtype=np.float32)
    box = _crop_box(center, _reach_mm(spec), spacing, ct_hu.shape)
    origin = np.array([s.start for s in box], dtype=np.float32)
    center_local = center - origin
    organs = base.organ_map[box]
    host = organs == host_id
    if not host.any():
        raise BaseError(f"{spec.organ_label} is not near the lesion centre {spec.center_vox} in base {base.base_id!r}")
    occ = occupied[box] if occupied is not None else np.zeros(host.shape, dtype=bool)
    shape = host.shape
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), axis=-1)
    offsets = (grid - center_local) * spacing
    erode = float(p.get("erode_mm", 0.0))
    bulge = float(p.get("bulge_mm", 0.0))
    invasion_mm = float(p.get("invasion_mm", 0.0)) if spec.invasion else 0.0
    depth_in = (
        ndimage.distance_transform_edt(host, sampling=spacing).astype(np.float32)
        if erode > 0 or growth in ("wall", "stones")
        else None
    )
    depth_out = (
        ndimage.distance_transform_edt(~host, sampling=spacing).astype(np.float32)
        if bulge > 0 or invasion_mm > 0 or growth == "wall"
        else None
    )

    # Where the lesion may be: the host (eroded for contained lesions), fat next to it for
    # exophytic/expansile growth, any neighbour within invasion_mm when invasion is allowed.
    allowed = host & (depth_in > erode) if erode > 0 else host.copy()
    if not allowed.any():
        allowed = host.copy()
    if bulge > 0:
        allowed |= (organs == 0) & (depth_out <= bulge)
    if invasion_mm > 0:
        allowed |= depth_out <= invasion_mm
    allowed &= ~occ

    if growth == "wall":
        rho_n = _deformed_ellipsoid(offsets, np.array(spec.radii_mm), {"deform": p.get("deform", 0.05)}, rng)
        shape_mask = _wall_shape(rho_n, host, depth_in, depth_out, p, spacing, rng, max(bulge, invasion_mm))
    elif growth == "stones":
        world_y = (np.asarray(base.affine, dtype=np.float32)[1, :3] * (grid + origin)).sum(axis=-1)
        lumen_depth = np.where(allowed, depth_in, 0.0)
        rho_n = _stone_shapes(offsets, spec, lumen_depth, center_local, spacing, world_y, rng)
        shape_mask = rho_n <= 1.0
    else:
        rho_n = _deformed_ellipsoid(offsets, np.array(spec.radii_mm), p, rng)
        irregularity = float(p.get("irregularity", 0.0))
        if irregularity > 0:
            rho_n = rho_n * (1.0 + irregularity * np.clip(_smooth_noise(shape, 3.0 / spacing, rng), -2.0, 2.0))
        shape_mask = (rho_n <= 1.0) | _spicules(offsets, rho_n, p, spacing, rng)
    c_idx = tuple(np.clip(np.round(center_local).astype(int), 0, np.array(shape) - 1))
    if growth != "wall" and allowed[c_idx]:
        shape_mask[c_idx] = True  # the centre voxel is always part of a compact lesion
    lesion = shape_mask & allowed
    if invasion_mm > 0:
        lesion = _limit_invasion(lesion, organs, host, depth_out, invasion_mm, base)
    if growth != "stones":
        lesion = _keep_main_component(lesion, center_local)
    if not lesion.any():
        raise BaseError(
            f"{spec.lesion_type} in {spec.organ_label} of base {base.base_id!r}: no voxel left after clipping "
            f"to the organ at {tuple(round(c, 1) for c in spec.center_vox)}"
        )

    # Blend in a tight box: the lesion plus its edge ramp.
    edge_mm = edge_width_mm(spacing, float(p.get("edge_mm", DEFAULT_EDGE_MM)))
    pad = np.ceil(edge_mm / spacing).astype(int) + 1
    voxels = np.argwhere(lesion)
    lo = np.maximum(voxels.min(axis=0) - pad, 0)
    hi = np.minimum(voxels.max(axis=0) + pad + 1, np.array(shape))
    tight = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    lesion_t = lesion[tight]
    signed = _signed_distance_mm(lesion_t, spacing)
    weight = blend_weight(lesion_t, spacing, edge_mm, signed_mm=signed)
    weight[occ[tight]] = 0.0
    lesion_hu = _intensity(spec, lesion_t, rho_n[tight], np.maximum(signed, 0.0), base, spacing, rng)
    full_box = tuple(slice(b.start + t.start, b.start + t.stop) for b, t in zip(box, tight))
    crop = ct_hu[full_box]
    crop += weight * (lesion_hu - crop)
    mask = np.zeros(ct_hu.shape, dtype=bool)
    mask[full_box] = lesion_t
    return SynthesizedLesion(spec=spec, mask=mask)


def synthesize_lesion(
    ct_hu: np.ndarray,
    base: HealthyBase,
    lesion_type: str,
    rng: np.random.Generator,
    *,
    size_class: str | None = None,
    occupied: np.ndarray | None = None,
    max_attempts: int = 6,
) -> SynthesizedLesion:
    """Sample a spec for ``lesion_type`` in ``base``'s phase and insert it into ``ct_hu`` (in place).

    Placement is retried (up to ``max_attempts``) when clipping leaves no voxel, with a smaller
    size class from the third attempt on.

    Raises:
        ValueError: unknown lesion type or size class.
        datasets_pasta.bases.BaseError: the base lacks the organ, or no attempt fits.
    """
    if lesion_type not in LESION_TYPES:
        raise ValueError(f"unknown lesion type {lesion_type!r}; valid types: {', '.join(LESION_TYPES)}")
    base.require_organ(LESION_TYPES[lesion_type].organ)
    order = list(SIZE_CLASSES)
    current = size_class
    last_error: BaseError | None = None
    for attempt in range(max_attempts):
        if attempt >= 2 and current is not None and order.index(current) > 0:
            current = order[order.index(current) - 1]
        elif attempt >= 2 and current is None:
            current = "small"
        try:
            spec = sample_lesion_spec(lesion_type, base, base.phase, rng, size_class=current, occupied=occupied)
            return insert_lesion(ct_hu, base, spec, rng, occupied=occupied)
        except BaseError as err:  # placement failures only: the organ was checked above
            logger.debug("attempt %d for %s failed: %s", attempt + 1, lesion_type, err)
            last_error = err
    raise BaseError(
        f"could not place a {lesion_type} in base {base.base_id!r} after {max_attempts} attempts: {last_error}"
    )


__all__ = [
    "GROWTH_PATTERNS",
    "HOLLOW_ORGAN_TYPES",
    "SIZE_CLASSES",
    "TYPE_MAX_RADIUS_MM",
    "TYPE_SIZE_WEIGHTS",
    "LesionSpec",
    "SynthesizedLesion",
    "DEFAULT_EDGE_MM",
    "blend_weight",
    "edge_width_mm",
    "insert_lesion",
    "sample_lesion_spec",
    "synthesize_lesion",
]
