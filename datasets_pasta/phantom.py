"""Procedural anatomical phantom: a healthy torso CT with its TotalSegmentator organ map.

The phantom is the generator's built-in healthy base: it needs no data, is deterministic for a
seed, and holds every organ the 15 lesion types need (lung lobes, liver, gallbladder, pancreas,
urinary bladder, esophagus, stomach, kidneys, colon, vertebrae) at any spacing down to ~6 mm.

Anatomy is built from implicit surfaces (ellipsoids, superellipse cross-sections, tubes along
smooth paths) painted into a label map in a fixed order, later structures overwriting earlier
ones, so organs never overlap. A parallel *tissue* map records what each voxel is made of
(cortex or medulla, wall or lumen, cortical or cancellous bone, ...); HU come from a per-phase
table of tissue values (plain / arterial / venous), smooth low-frequency variation, a slight
blur so boundaries are not perfect steps, and spatially correlated scanner noise.

Coordinates: world = RAS+ mm as this project uses it (``+x`` toward the patient's right, so the
liver has larger ``x`` than the spleen; ``+y`` anterior; ``+z`` superior), the grid centred on
the origin. Anatomy is laid out in a canonical frame (mm; T1 at z ≈ +228, sacrum at the bottom
of the default 480 mm field) that each seed scales, shifts and jitters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from modeling_pasta.organs import TOTALSEGMENTATOR_TOTAL, name_to_id
from modeling_pasta.report import PHASES

from .bases import HealthyBase

logger = logging.getLogger(__name__)

LABEL: dict[str, int] = name_to_id(TOTALSEGMENTATOR_TOTAL)

#: Tissue -> (plain, arterial, venous) HU and the amplitude (HU) of its smooth intra-organ variation.
TISSUE_HU: dict[str, tuple[float, float, float, float]] = {
    "air": (-1000.0, -1000.0, -1000.0, 0.0),
    "lung": (-860.0, -860.0, -860.0, 20.0),
    "fat": (-100.0, -100.0, -100.0, 8.0),
    "muscle": (50.0, 58.0, 62.0, 5.0),
    "soft_tissue": (40.0, 55.0, 65.0, 5.0),
    "liver": (58.0, 72.0, 108.0, 5.0),
    "spleen": (48.0, 125.0, 118.0, 5.0),
    "pancreas": (42.0, 110.0, 95.0, 6.0),
    "kidney_cortex": (33.0, 185.0, 182.0, 5.0),
    "kidney_medulla": (30.0, 75.0, 172.0, 5.0),
    "adrenal": (30.0, 70.0, 65.0, 4.0),
    "artery_blood": (42.0, 300.0, 132.0, 4.0),
    "vein_blood": (42.0, 95.0, 135.0, 4.0),
    "portal_blood": (42.0, 120.0, 162.0, 4.0),
    "heart_blood": (42.0, 260.0, 145.0, 4.0),
    "pulmonary_blood": (42.0, 230.0, 145.0, 4.0),
    "myocardium": (45.0, 100.0, 95.0, 4.0),
    "bowel_wall": (40.0, 85.0, 100.0, 4.0),
    "bladder_wall": (40.0, 70.0, 85.0, 4.0),
    "gallbladder_wall": (40.0, 80.0, 90.0, 4.0),
    "bile": (10.0, 10.0, 10.0, 2.0),
    "urine": (8.0, 8.0, 8.0, 2.0),
    "gastric_fluid": (20.0, 20.0, 20.0, 4.0),
    "bowel_fluid": (15.0, 15.0, 15.0, 5.0),
    "stool": (-60.0, -60.0, -60.0, 0.0),
    "cortical_bone": (700.0, 700.0, 700.0, 40.0),
    "cancellous_bone": (220.0, 220.0, 220.0, 20.0),
    "disc": (85.0, 90.0, 95.0, 5.0),
    "csf": (8.0, 8.0, 8.0, 2.0),
    "spinal_cord": (35.0, 35.0, 35.0, 2.0),
    "cartilage": (120.0, 120.0, 120.0, 15.0),
}
TISSUE: dict[str, int] = {name: i for i, name in enumerate(TISSUE_HU)}
#: Medium-scale (~6 mm) mottling amplitude (HU) of tissues whose texture is not smooth.
_MOTTLE_HU = {"stool": 110.0, "cancellous_bone": 45.0, "cortical_bone": 60.0}

PSF_SIGMA_MM = 0.7  # scanner point spread (Gaussian sigma): softens boundaries, correlates noise
PSF_TRUNCATE = 3.0  # the point spread's radius, in sigmas
CORTEX_MM = 1.5  # cortical bone thickness
MAX_VOXELS = 150_000_000

# Canonical cavity (inside the ribs and abdominal wall): z (mm), half-width, anterior and
# posterior half-depth of a superellipse cross-section. Layers are added outward from it.
_CAVITY = np.array(
    [
        (-260, 100, 70, 72),
        (-200, 105, 75, 70),
        (-140, 122, 82, 70),
        (-80, 122, 85, 72),
        (-20, 128, 85, 76),
        (40, 124, 80, 80),
        (120, 118, 75, 82),
        (180, 108, 68, 78),
        (215, 88, 55, 62),
        (245, 40, 32, 35),
        (260, 35, 30, 30),
    ],
    dtype=float,
)
# Layer thicknesses (lateral, anterior, posterior; mm) by z: rib layer, muscle, subcutaneous fat.
_RIB_LAYER = np.array([(-60, 0, 0, 0), (-20, 10, 10, 10), (200, 10, 10, 10), (260, 4, 4, 4)], dtype=float)
_MUSCLE = np.array(
    [(-260, 35, 12, 40), (-180, 30, 10, 38), (-130, 14, 10, 30), (-20, 10, 10, 28), (40, 12, 12, 14),
     (200, 14, 16, 14), (260, 10, 8, 10)],
    dtype=float,
)
_FAT = np.array(
    [(-260, 24, 20, 20), (-120, 22, 22, 16), (0, 20, 20, 14), (60, 12, 14, 12), (200, 10, 12, 10), (260, 5, 5, 5)],
    dtype=float,
)
_LAYERS = ("cavity", "rib", "muscle", "body")  # each name is the outer boundary of that layer
# Vertebral body centre (y, mm) along the spine: thoracic kyphosis, lumbar lordosis.
_SPINE_Y = np.array([(-150, -28), (-130, -22), (-80, -16), (-20, -24), (40, -35), (120, -40), (200, -32), (260, -25)])
_SUPERELLIPSE = 2.4


def _profile(table: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
    """Columns of a z-indexed table, linearly interpolated at ``z``."""
    return [np.interp(z, table[:, 0], table[:, i]).astype(np.float32) for i in range(1, table.shape[1])]


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _frame(u: Sequence[float], hint: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Orthonormal rows (u, v, w) with u along ``u`` and v as close to ``hint`` as possible."""
    u = _unit(u)
    h = np.asarray(hint, dtype=float)
    if abs(np.dot(_unit(h), u)) > 0.95:
        h = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    v = _unit(h - np.dot(h, u) * u)
    return np.stack([u, v, np.cross(u, v)])


def _smooth_path(
    points: Sequence[Sequence[float]], radii: Sequence[float], step_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """A cubic spline through control points (chord-length parameter), sampled every ``step_mm``."""
    pts = np.asarray(points, dtype=float)
    rad = np.asarray(radii, dtype=float)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    n = max(2, int(math.ceil(s[-1] / step_mm)) + 1)
    t = np.linspace(0.0, s[-1], n)
    if len(pts) == 2:
        dense = pts[0] + (t / s[-1])[:, None] * (pts[1] - pts[0])
    else:
        dense = CubicSpline(s, pts, axis=0, bc_type="natural")(t)
    return dense, np.interp(t, s, rad)


@dataclass
class _Region:
    """A box of the grid: its slices and its canonical coordinates (mm, broadcastable)."""

    sl: tuple[slice, slice, slice]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.shape[0], self.y.shape[1], self.z.shape[2])


@dataclass
class _Segment:
    """One tube segment evaluated in its box: distance to the axis, radius, axis height."""

    region: _Region
    dist: np.ndarray
    radius: np.ndarray
    axis_y: np.ndarray


class _PhantomBuilder:
    """Paints the phantom's anatomy into a label map and a tissue map (canonical mm frame)."""

    def __init__(self, shape: tuple[int, int, int], spacing: np.ndarray, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.shape = shape
        self.spacing = spacing
        origin = -(np.asarray(shape) - 1) / 2.0 * spacing
        self.world = [(origin[i] + np.arange(shape[i]) * spacing[i]).astype(np.float32) for i in range(3)]
        # Habitus: body scale, vertical/AP shift, subcutaneous fat.
        self.scale = self.rng.uniform(0.95, 1.05, size=3)
        self.shift = np.array([0.0, self.rng.uniform(-4, 4), self.rng.uniform(-8, 8)])
        self.fat_factor = float(self.rng.uniform(0.6, 1.4))
        self.canon = [((self.world[i] - self.shift[i]) / self.scale[i]).astype(np.float32) for i in range(3)]
        self.labels = np.zeros(shape, np.uint8)
        self.tissue = np.full(shape, TISSUE["air"], np.uint8)
        self.shape_field = _smooth_field(self.rng, shape, spacing, 30.0)
        self.dome = {"right": 45.0 + self.rng.uniform(-6, 6), "left": 32.0 + self.rng.uniform(-6, 6)}
        self._levels()

    # ----------------------------------------------------------------- helpers
    def _jit(self, p: Sequence[float], mm: float = 5.0) -> np.ndarray:
        return np.asarray(p, dtype=float) + self.rng.uniform(-mm, mm, size=3)

    def _size(self, s: Sequence[float], frac: float = 0.1) -> np.ndarray:
        s = np.asarray(s, dtype=float)
        return s * self.rng.uniform(1 - frac, 1 + frac) * self.rng.uniform(1 - frac / 3, 1 + frac / 3, size=s.shape)

    def _step(self, step_mm: float) -> float:
        """Path sampling step: finer segments than ~1.5 voxels add time, not detail."""
        return max(step_mm, 1.5 * float(self.spacing.max()))

    def region(self, lo: Sequence[float], hi: Sequence[float]) -> _Region | None:
        """The grid box covering canonical [lo, hi] (mm), or None when it is outside the grid."""
        sl = []
        for i in range(3):
            a = int(np.searchsorted(self.canon[i], lo[i], side="left"))
            b = int(np.searchsorted(self.canon[i], hi[i], side="right"))
            if b <= a:
                return None
            sl.append(slice(a, b))
        c = self.canon
        return _Region(
            tuple(sl),
            c[0][sl[0]][:, None, None],
            c[1][sl[1]][None, :, None],
            c[2][sl[2]][None, None, :],
        )

    def full(self) -> _Region:
        """The whole grid as a region."""
        return self.region([-np.inf] * 3, [np.inf] * 3)  # type: ignore[return-value]

    def paint(
        self,
        reg: _Region,
        mask: np.ndarray,
        label: int | None = None,
        tissue: int | np.ndarray | None = None,
        *,
        only: Sequence[int] | None = None,
        keep: Sequence[int] | None = None,
        inside: np.ndarray | None = None,
    ) -> None:
        """Set label and/or tissue where ``mask`` holds (optionally only on / not on some labels)."""
        labels = self.labels[reg.sl]
        m = np.broadcast_to(mask, reg.shape)
        if inside is not None:
            m = m & inside[reg.sl]
        if only is not None:
            m = m & _lookup(only)[labels]
        if keep is not None:
            m = m & ~_lookup(keep)[labels]
        if label is not None:
            labels[m] = label
        if tissue is not None:
            t = self.tissue[reg.sl]
            t[m] = tissue if np.isscalar(tissue) else np.broadcast_to(tissue, reg.shape)[m]

    def ellipsoid(
        self, center: Sequence[float], semi: Sequence[float], axes: np.ndarray | None = None, warp: float = 0.0
    ) -> tuple[_Region, np.ndarray] | None:
        """Normalised squared radius (< 1 inside) of a (rotated, warped) ellipsoid in its box."""
        c = np.asarray(center, dtype=float)
        semi = np.asarray(semi, dtype=float)
        reach = (semi.max() if axes is not None else semi) * (1.0 + 2.0 * warp)
        reg = self.region(c - reach, c + reach)
        if reg is None:
            return None
        d = (reg.x - c[0], reg.y - c[1], reg.z - c[2])
        if axes is None:
            f = (d[0] / semi[0]) ** 2 + (d[1] / semi[1]) ** 2 + (d[2] / semi[2]) ** 2
        else:
            f = sum(((d[0] * e[0] + d[1] * e[1] + d[2] * e[2]) / a) ** 2 for e, a in zip(axes, semi))
        if warp:
            f = f + warp * self.shape_field[reg.sl]
        return reg, np.broadcast_to(f, reg.shape)

    def segments(self, points: np.ndarray, radii: np.ndarray, warp: float = 0.0) -> Iterator[_Segment]:
        """Capsules between consecutive path points (radius linear along each), box by box."""
        for p0, p1, r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
            reach = max(r0, r1) * (1.0 + 2.5 * warp) + 1.0
            reg = self.region(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
            if reg is None:
                continue
            v = p1 - p0
            length2 = max(float(v @ v), 1e-6)
            dx, dy, dz = reg.x - p0[0], reg.y - p0[1], reg.z - p0[2]
            t = np.clip((dx * v[0] + dy * v[1] + dz * v[2]) / length2, 0.0, 1.0)
            dist = np.sqrt((dx - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dz - t * v[2]) ** 2)
            yield _Segment(reg, dist, r0 + t * (r1 - r0), p0[1] + t * v[1])

    def tube(
        self,
        points: Sequence[Sequence[float]],
        radii: Sequence[float],
        label: int | None,
        tissue: int,
        *,
        step_mm: float = 8.0,
        warp: float = 0.0,
        **paint_kw,
    ) -> None:
        """A solid tube along a smooth path through ``points`` (radii in mm at each point)."""
        if len(points) > 2:
            pts, rad = _smooth_path(points, radii, self._step(step_mm))
        else:
            pts, rad = np.asarray(points, dtype=float), np.asarray(radii, dtype=float)
        for seg in self.segments(pts, rad, warp):
            r = seg.radius * (1.0 + warp * self.shape_field[seg.region.sl]) if warp else seg.radius
            self.paint(seg.region, seg.dist < r, label, tissue, **paint_kw)

    def hollow(
        self,
        points: Sequence[Sequence[float]],
        radii: Sequence[float],
        label: int,
        *,
        wall_mm: float,
        wall: int,
        lumen: int,
        air_above: float | None = None,
        air_level_y: float | None = None,
        step_mm: float = 8.0,
        warp: float = 0.0,
        inside: np.ndarray | None = None,
    ) -> None:
        """A hollow organ: wall + lumen under one label.

        Lumen air (supine patient: anterior is up) fills either the part of each loop more than
        ``air_above`` x radius anterior to its axis, or everything anterior to the plane
        ``y = air_level_y`` (an air-fluid level).
        """
        pts, rad = _smooth_path(points, radii, self._step(step_mm))
        segs = list(self.segments(pts, rad, warp))

        def outer(seg: _Segment) -> np.ndarray:
            return seg.radius * (1.0 + warp * self.shape_field[seg.region.sl]) if warp else seg.radius

        for seg in segs:
            self.paint(seg.region, seg.dist < outer(seg), label, wall, inside=inside)
        for seg in segs:
            r_in = outer(seg) - wall_mm
            m = seg.dist < r_in
            content = np.full(seg.region.shape, lumen, np.uint8)
            if air_above is not None:
                content[np.broadcast_to(seg.region.y - seg.axis_y > air_above * r_in, content.shape)] = TISSUE["air"]
            if air_level_y is not None:
                content[np.broadcast_to(seg.region.y > air_level_y, content.shape)] = TISSUE["air"]
            self.paint(seg.region, m, None, content, only=[label])

    # --------------------------------------------------------------- landmarks
    def _levels(self) -> None:
        """Vertebral levels C7..L5: z range, body half-width and half-depth, disc thickness (mm)."""
        heights = np.concatenate([[15.0], np.linspace(17.0, 23.0, 12), [27.0, 28.0, 28.0, 28.0, 27.0]])
        heights *= self.rng.uniform(0.96, 1.04, size=heights.shape)
        names = ["C7"] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
        top = 228.0 + heights[0]  # T1's upper endplate at z = 228
        disc = [8.0 if n.startswith("L") else 4.0 for n in names] + [8.0]
        # name, lo, hi, rx, ry, thickness of the disc below
        self.vertebrae: list[tuple[str, float, float, float, float, float]] = []
        for k, (name, h) in enumerate(zip(names, heights)):
            lumbar = name.startswith("L")
            t = k - 1  # T1 -> 0
            rx = 23.0 + 0.5 * (t - 12) if lumbar else 14.0 + 6.0 * max(t, -0.5) / 11
            ry = 17.0 + 0.25 * (t - 12) if lumbar else 11.0 + 5.0 * max(t, -0.5) / 11
            self.vertebrae.append((name, top - h, top, rx, ry, (disc[k] + disc[k + 1]) / 2))
            top -= h
        self.sacrum_top = top - disc[-1] / 2

    def level(self, name: str) -> float:
        """Centre z (mm) of a vertebral level."""
        for n, lo, hi, *_ in self.vertebrae:
            if n == name:
                return (lo + hi) / 2
        raise KeyError(name)

    def spine_y(self, z: np.ndarray | float) -> np.ndarray:
        """Vertebral body centre (y, mm) at heights z."""
        return np.interp(z, _SPINE_Y[:, 0], _SPINE_Y[:, 1]).astype(np.float32)

    def spine_rx_ry(self, z: float) -> tuple[float, float]:
        """Half-width and half-depth (mm) of the vertebral body at height z."""
        for _, lo, hi, rx, ry, _ in self.vertebrae:
            if lo <= z <= hi:
                return rx, ry
        top = self.vertebrae[0]
        return (top[3], top[4]) if z > top[2] else (25.0, 18.0)

    def front_of_spine(self, z: float, gap: float) -> float:
        """y of a point ``gap`` mm anterior to the vertebral body at height z."""
        return float(self.spine_y(z)) + self.spine_rx_ry(z)[1] + gap

    def diaphragm(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height (z, mm) of the diaphragm: two domes, higher on the right, deep posterior recesses."""
        out = None
        for side, xs in (("right", 60.0), ("left", -60.0)):
            ky = np.where(y < 5.0, 0.0045, 0.002)
            d = self.dome[side] - 0.006 * (x - xs) ** 2 - ky * (y - 5.0) ** 2
            out = d if out is None else np.maximum(out, d)
        return out

    def cross_section(self, z: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Half-width, anterior and posterior half-depth (mm) of a layer's outer boundary at heights z."""
        ax, ant, post = _profile(_CAVITY, z)
        tables = (_RIB_LAYER, _MUSCLE, _FAT)
        for i in range(_LAYERS.index(layer)):
            tl, ta, tp = _profile(tables[i], z)
            f = self.fat_factor if tables[i] is _FAT else 1.0
            ax, ant, post = ax + f * tl, ant + f * ta, post + f * tp
        return ax, ant, post

    def layer_mask(self, reg: _Region, layer: str) -> np.ndarray:
        """Inside a layer's outer boundary (superellipse cross-sections)."""
        ax, ant, post = self.cross_section(reg.z, layer)
        ay = np.where(reg.y > 0, ant, post)
        return (np.abs(reg.x) / ax) ** _SUPERELLIPSE + (np.abs(reg.y) / ay) ** _SUPERELLIPSE < 1.0

    def wall_point(self, z: float, phi: float, side: int, layer: str, grow_mm: float = 0.0) -> np.ndarray:
        """Point of a layer's boundary (grown by ``grow_mm``) at height z and angle phi (0 posterior,
        pi anterior) on one side (+1 patient's right)."""
        ax, ant, post = (float(v[0]) + grow_mm for v in self.cross_section(np.array([z]), layer))
        s, c = math.sin(phi), math.cos(phi)
        ay = post if c > 0 else ant
        r = 1.0 / ((abs(s) / ax) ** _SUPERELLIPSE + (abs(c) / ay) ** _SUPERELLIPSE) ** (1.0 / _SUPERELLIPSE)
        return np.array([side * r * s, -r * c, z])

    # ----------------------------------------------------------------- anatomy
    def build(self) -> None:
        self.body_wall()
        self.lungs()
        self.mediastinum()
        self.abdomen()
        self.vessels()
        self.airways()
        self.muscles()
        self.spine()
        self.pelvis()
        self.thoracic_cage()
        self.bone_marrow()

    def body_wall(self) -> None:
        """Skin/subcutaneous fat, the muscle layer, the cavity (visceral fat), the diaphragm."""
        reg = self.full()
        self.body = self.layer_mask(reg, "body")
        self.paint(reg, self.body, 0, TISSUE["fat"])
        self.paint(reg, self.layer_mask(reg, "muscle"), 0, TISSUE["muscle"])
        self.cavity = self.layer_mask(reg, "cavity")
        # The spine bulges into the cavity from behind; in the abdomen the quadratus lumborum and
        # crura widen that bulge (the lungs reach the rib heads, the viscera stay off the spine).
        centres = [(lo + hi) / 2 for _, lo, hi, *_ in self.vertebrae][::-1]
        half_widths = [rx + (4.0 if lo > 10.0 else 18.0) for _, lo, _, rx, *_ in self.vertebrae][::-1]
        spine_block = (reg.y < self.spine_y(reg.z)) & (np.abs(reg.x) < np.interp(reg.z, centres, half_widths))
        spine_block &= reg.z > self.sacrum_top
        self.cavity &= ~spine_block
        self.paint(reg, self.cavity, 0, TISSUE["fat"])
        # Diaphragm: a muscle sheet ~5 mm thick under the lungs; abdominal organs stay below it.
        d = self.diaphragm(reg.x, reg.y)
        self.paint(reg, (reg.z < d) & (reg.z > d - 5.0), 0, TISSUE["muscle"], inside=self.cavity)
        self.abdominal = self.cavity & (reg.z < d - 4.0)

    def lungs(self) -> None:
        """Five lobes above the diaphragm, split by the oblique and horizontal fissures."""
        reg = self.region((-175, -125, -60), (175, 125, 240))
        if reg is None:
            return
        x, y, z = reg.x, reg.y, reg.z
        thorax = z > self.diaphragm(x, y)
        f = self.shape_field[reg.sl] * 6.0  # fissures are gently curved
        for side, xs in ((1, 50.0), (-1, -50.0)):
            apex = 222.0 + self.rng.uniform(-5, 5) - 0.012 * ((x - xs) ** 2 + (y + 15.0) ** 2)
            lung = thorax & (z < apex) & (side * x > 6.0)
            oblique_at_back = (150.0 if side > 0 else 158.0) + self.rng.uniform(-8, 8)
            upper = z > oblique_at_back - 0.76 * (y + 80.0) + f
            if side > 0:
                horizontal = 100.0 + self.rng.uniform(-8, 8)
                middle = upper & (z < horizontal + f) & (y > -25.0)
                parts = (
                    ("lung_lower_lobe_right", ~upper),
                    ("lung_upper_lobe_right", upper & ~middle),
                    ("lung_middle_lobe_right", middle),
                )
            else:
                parts = (("lung_lower_lobe_left", ~upper), ("lung_upper_lobe_left", upper))
            for name, part in parts:
                self.paint(reg, lung & part, LABEL[name], TISSUE["lung"], inside=self.cavity)

    def mediastinum(self) -> None:
        """Mediastinal fat, the heart in its pericardial fat, the esophagus."""
        reg = self.region((-60, -120, -40), (60, 125, 260))
        if reg is not None:
            z = reg.z
            _, ant, _ = self.cross_section(z, "cavity")
            back = self.spine_y(z) - 2.0
            half_w = np.interp(z, [0, 60, 110, 150, 200, 260], [18, 24, 32, 30, 24, 22]).astype(np.float32)
            centre, half_d = (back + ant) / 2, (ant - back) / 2 + 2.0
            column = ((reg.x + 3.0) / half_w) ** 2 + ((reg.y - centre) / half_d) ** 2 < 1.0
            column &= reg.z > self.diaphragm(reg.x, reg.y)
            self.paint(reg, column, 0, TISSUE["fat"], inside=self.cavity)
        # Heart: long axis from the base (posterior, superior, right) to the apex (anterior, inferior, left).
        c = self._jit((-22.0, 30.0, 70.0), 5)
        semi = self._size((62.0, 46.0, 40.0), 0.08)
        axes = _frame((-0.55, 0.5, -0.65), hint=(0.0, 1.0, 0.3))
        got = self.ellipsoid(c, semi + 6.0, axes)
        if got is not None:
            r, f = got
            self.paint(r, (f < 1) & (r.z > self.diaphragm(r.x, r.y) - 2), 0, TISSUE["fat"], inside=self.cavity)
        got = self.ellipsoid(c, semi, axes, warp=0.04)
        if got is not None:
            r, f = got
            heart = (f < 1) & (r.z > self.diaphragm(r.x, r.y) - 2)
            self.paint(r, heart, LABEL["heart"], TISSUE["myocardium"], inside=self.cavity)
            inner = self.ellipsoid(c, semi - 9.0, axes)
            if inner is not None:
                ri, fi = inner
                self.paint(ri, fi < 1, None, TISSUE["heart_blood"], only=[LABEL["heart"]])
        self.paint_esophagus()

    def esophagus_path(self) -> tuple[list[np.ndarray], list[float]]:
        """Control points and radii (mm): prevertebral from the neck, behind the trachea and the
        left atrium, then left-anterior through the hiatus to the cardia."""
        ys = self.front_of_spine
        pts = [
            (-3.0, ys(250, 9), 250.0),
            (-5.0, ys(200, 9), 200.0),
            (-6.0, ys(150, 9), 150.0),
            (-3.0, ys(100, 11), 100.0),
            (-6.0, ys(50, 12), 50.0),
            (-16.0, ys(25, 18), 25.0),
            (-30.0, ys(12, 26), 12.0),
            (-40.0, 5.0, 6.0),
        ]
        jitter = self.rng.uniform(-3, 3, size=(len(pts), 3)) * np.array([1, 0.5, 0])
        return [np.asarray(p) + j for p, j in zip(pts, jitter)], [10.0] * 7 + [11.0]

    def paint_esophagus(self) -> None:
        """A muscular tube ~20 mm wide in posterior mediastinal fat, its collapsed lumen holding a
        little air."""
        pts, rad = self.esophagus_path()
        self.tube(pts, [r + 4.0 for r in rad], 0, TISSUE["fat"], inside=self.cavity, keep=[LABEL["heart"]])
        self.hollow(pts, rad, LABEL["esophagus"], wall_mm=7.0, wall=TISSUE["bowel_wall"], lumen=TISSUE["air"],
                    inside=self.cavity)

    def abdomen(self) -> None:
        """Solid and hollow abdominal and pelvic organs, in an order that settles their contacts."""
        cav = self.abdominal

        # Liver: a large right lobe and a tapering left lobe (soft union) under the right dome; the
        # inferior surface slopes from the right flank (low, posterior lower) up to the left lobe.
        right = self.ellipsoid(self._jit((60.0, 5.0, 0.0)), self._size((85.0, 100.0, 90.0)), warp=0.12)
        left_c, left_s = self._jit((-20.0, 42.0, 12.0)), self._size((62.0, 42.0, 34.0))
        tip = -100.0 + self.rng.uniform(-10, 10)

        def liver_mask(reg: _Region, f: np.ndarray) -> np.ndarray:
            inferior = tip + 0.55 * (125.0 - reg.x) + 0.25 * (reg.y + 40.0) + 6.0 * self.shape_field[reg.sl]
            return (f < 1) & (reg.z > inferior)

        if right is not None:
            reg, f1 = right
            f2 = ((reg.x - left_c[0]) / left_s[0]) ** 2 + ((reg.y - left_c[1]) / left_s[1]) ** 2
            f2 = f2 + ((reg.z - left_c[2]) / left_s[2]) ** 2 + 0.12 * self.shape_field[reg.sl]
            k = 0.25
            f = -k * np.logaddexp(-f1 / k, -f2 / k)
            self.paint(reg, liver_mask(reg, f), LABEL["liver"], TISSUE["liver"], inside=cav)
        # The left lobe extends beyond the right lobe's box: paint it in its own box too.
        got = self.ellipsoid(left_c, left_s, warp=0.12)
        if got is not None:
            reg, f = got
            self.paint(reg, liver_mask(reg, f), LABEL["liver"], TISSUE["liver"], inside=cav)

        # Spleen: along the 10th rib, posterior-superior to anterior-inferior, hilum medial.
        c = self._jit((-100.0, -30.0, -5.0))
        axes = _frame((-0.15, 0.7, -0.7), hint=(1.0, 0.3, 0.0))
        got = self.ellipsoid(c, self._size((60.0, 28.0, 40.0)), axes, warp=0.1)
        if got is not None:
            reg, f = got
            self.paint(reg, f < 1, LABEL["spleen"], TISSUE["spleen"], inside=cav)
            hilum = self.ellipsoid(c + 24.0 * axes[1], (14.0, 14.0, 14.0))
            if hilum is not None:
                rh, fh = hilum
                self.paint(rh, fh < 1, 0, TISSUE["fat"], only=[LABEL["spleen"]])

        # Stomach: fundus under the left dome, body down and forward, antrum across the midline.
        stomach = [
            self._jit(p, 4)
            for p in ((-48, -8, 24), (-52, 20, 0), (-38, 55, -22), (-8, 66, -48), (14, 60, -48), (28, 50, -42))
        ]
        radii = self._size((30.0, 30.0, 22.0, 17.0, 14.0, 10.0), 0.1)
        self.hollow(
            stomach, radii, LABEL["stomach"], wall_mm=5.0, wall=TISSUE["bowel_wall"], lumen=TISSUE["gastric_fluid"],
            air_level_y=float(self.rng.uniform(20, 45)), warp=0.06, inside=cav,
        )

        # Small bowel: a serpentine of loops filling the mid and lower abdomen.
        self.small_bowel()

        # Colon frame: cecum and ascending (right), transverse, descending (left), sigmoid, rectum.
        colon = [
            (68, 25, -140), (80, 12, -115), (86, 0, -88), (84, 8, -72), (68, 38, -82), (40, 62, -80),
            (0, 70, -92), (-40, 62, -74), (-80, 20, -50), (-92, 5, -68), (-92, 2, -100), (-80, 8, -130),
            (-55, 30, -150), (-20, 38, -156), (8, 18, -165), (2, -12, -182), (0, -25, -205), (0, -25, -255),
        ]
        colon = [self._jit(p, 4) for p in colon]
        radii = self._size([28, 26, 24, 23, 21, 20, 19, 20, 19, 18, 18, 17, 16, 16, 16, 17, 20, 18], 0.1)
        self.hollow(
            colon, radii, LABEL["colon"], wall_mm=3.0, wall=TISSUE["bowel_wall"], lumen=TISSUE["stool"],
            air_above=0.1, step_mm=7.0, warp=0.08, inside=cav,
        )

        # Duodenum: the C-loop from the pylorus around the pancreatic head to the DJ flexure.
        duodenum = [
            (28, 50, -42), (45, 40, -42), (55, 28, -52), (58, 25, -66), (57, 28, -88), (35, 36, -100),
            (0, 40, -102), (-25, 36, -95), (-32, 35, -75), (-38, 40, -60),
        ]
        self.hollow(
            [self._jit(p, 3) for p in duodenum], [12.0] * len(duodenum), LABEL["duodenum"], wall_mm=3.0,
            wall=TISSUE["bowel_wall"], lumen=TISSUE["bowel_fluid"], air_above=0.6, step_mm=6.0, inside=cav,
        )

        # Pancreas: head in the duodenal sweep, neck over the portal confluence, tail to the spleen.
        pancreas = [(32, 28, -60), (26, 33, -47), (6, 38, -40), (-22, 33, -34), (-50, 16, -24), (-72, -5, -16)]
        self.tube(
            [self._jit(p, 3) for p in pancreas], self._size((17, 14, 11, 12, 11, 9), 0.1),
            LABEL["pancreas"], TISSUE["pancreas"], step_mm=6.0, warp=0.12, inside=cav,
        )

        # Adrenal glands: thin plates above and medial to the kidneys.
        for name, c in (("adrenal_gland_right", (36, -22, 10)), ("adrenal_gland_left", (-36, -16, 2))):
            got = self.ellipsoid(self._jit(c, 3), (4.0, 15.0, 14.0))
            if got is not None:
                reg, f = got
                self.paint(reg, f < 1, LABEL[name], TISSUE["adrenal"], inside=cav)

        self.kidneys()

        # Gallbladder: pear-shaped, in its fossa under the liver, fundus anterior-inferior.
        gb = [self._jit((40.0, 62.0, -52.0), 4), self._jit((35.0, 45.0, -30.0), 3), self._jit((28.0, 28.0, -12.0), 3)]
        self.hollow(
            gb, self._size((16.0, 14.0, 6.0), 0.12), LABEL["gallbladder"], wall_mm=2.0,
            wall=TISSUE["gallbladder_wall"], lumen=TISSUE["bile"], step_mm=5.0, inside=cav,
        )

        # Urinary bladder: anterior in the pelvis, behind the pubic symphysis.
        c = self._jit((0.0, 32.0, -203.0), 4)
        semi = self._size((48.0, 36.0, 32.0), 0.15)
        got = self.ellipsoid(c, semi, warp=0.05)
        if got is not None:
            reg, f = got
            self.paint(reg, f < 1, LABEL["urinary_bladder"], TISSUE["bladder_wall"], inside=cav)
            inner = self.ellipsoid(c, semi - 3.5, warp=0.05)
            if inner is not None:
                ri, fi = inner
                self.paint(ri, fi < 1, None, TISSUE["urine"], only=[LABEL["urinary_bladder"]])

    def small_bowel(self) -> None:
        """Jejunum and ileum: a serpentine of loops (rows along x, stacked in y and z) from the
        duodenojejunal flexure to the cecum."""
        layers = np.array([-84.0, -106.0, -128.0, -150.0]) + self.rng.uniform(-4, 4, size=4)
        rows = [72.0, 48.0, 24.0]
        pts: list[tuple[float, float, float]] = [(-38.0, 40.0, -60.0)]
        direction = 1
        for i, z in enumerate(layers):
            order = rows if i % 2 == 0 else rows[::-1]
            for y in order:
                xs = np.linspace(-62.0, 55.0, 5)[::direction]
                for x in xs:
                    pts.append((x, y + self.rng.uniform(-6, 6), z + self.rng.uniform(-7, 7)))
                direction = -direction
        pts.append((62.0, 20.0, -128.0))  # terminal ileum to the cecum
        radii = np.full(len(pts), 12.0)
        radii[len(pts) // 2 :] = 11.0
        self.hollow(
            pts, radii, LABEL["small_bowel"], wall_mm=2.5, wall=TISSUE["bowel_wall"],
            lumen=TISSUE["bowel_fluid"], air_above=0.75, step_mm=6.0, warp=0.1, inside=self.abdominal,
        )

    def kidneys(self) -> None:
        """Bean-shaped kidneys, left higher; cortex, medullary pyramids, sinus fat at the hilum."""
        self.kidney_centers: dict[str, np.ndarray] = {}
        for side, name, c in ((1, "kidney_right", (72.0, -40.0, -55.0)), (-1, "kidney_left", (-66.0, -38.0, -45.0))):
            c = self._jit(c, 4)
            u = _unit((-0.25 * side, -0.2, 1.0))  # upper pole medial and posterior
            hilum = _unit((-side * 1.0, 0.6, 0.0))
            axes = _frame(u, hint=hilum)
            semi = self._size((55.0, 29.0, 22.0), 0.1)
            got = self.ellipsoid(c, semi, axes, warp=0.05)
            if got is None:
                continue
            reg, f = got
            d = (reg.x - c[0], reg.y - c[1], reg.z - c[2])
            along = (d[0] * axes[0][0] + d[1] * axes[0][1] + d[2] * axes[0][2]) / semi[0]
            rho = np.sqrt(np.maximum(f, 0.0))
            # Medulla: pyramids inside the cortex, separated by columns of cortex along the long axis.
            pyramids = (rho < 0.72) & (np.abs(np.sin(np.pi * 2.5 * along)) > 0.3)
            tissue = np.where(pyramids, TISSUE["kidney_medulla"], TISSUE["kidney_cortex"]).astype(np.uint8)
            self.paint(reg, f < 1, LABEL[name], tissue, inside=self.abdominal)
            sinus = self.ellipsoid(c + 0.65 * semi[1] * axes[1], (25.0, 12.0, 9.0), axes)
            if sinus is not None:
                rs, fs = sinus
                self.paint(rs, fs < 1, 0, TISSUE["fat"], only=[LABEL[name]])
            pelvis = self.ellipsoid(c + 0.75 * semi[1] * axes[1], (12.0, 7.0, 6.0), axes)
            if pelvis is not None:
                rp, fp = pelvis
                self.paint(rp, fp < 1, 0, TISSUE["urine"], inside=self.abdominal)
            self.kidney_centers[name] = c

    def vessels(self) -> None:
        """Aorta and branches, vena cavae, portal/splenic/superior mesenteric veins, iliac vessels."""
        cav = self.cavity
        fs = self.front_of_spine
        # Aorta: root in the heart, ascending, arch over the left bronchus, descending left of the spine.
        aorta = [
            (5, 25, 85), (12, 35, 115), (10, 33, 150), (0, 28, 170), (-20, 14, 176), (-26, -8, 168),
            (-22, float(self.spine_y(150)) + 6, 150), (-22, float(self.spine_y(90)) + 6, 90),
            (-20, float(self.spine_y(30)) + 9, 30), (-12, fs(-20, 11), -20), (-8, fs(-60, 10), -60),
            (-6, fs(-95, 9), -95),
        ]
        radii = [14, 15, 14, 13, 12, 12, 12, 12, 11.5, 11, 10, 9]
        # Desc. aorta in posterior mediastinal fat.
        self.tube(aorta[5:9], [r + 5 for r in radii[5:9]], 0, TISSUE["fat"], inside=cav, keep=[LABEL["esophagus"]])
        self.tube(aorta, radii, LABEL["aorta"], TISSUE["artery_blood"], inside=cav, keep=[LABEL["esophagus"]])
        branches = {
            "brachiocephalic_trunk": ([(3, 28, 172), (12, 26, 190), (18, 24, 200)], [7, 7, 6.5]),
            "common_carotid_artery_right": ([(18, 24, 200), (22, 20, 230), (24, 18, 260)], [4.5, 4.5, 4.5]),
            "subclavian_artery_right": ([(18, 24, 200), (45, 15, 212), (80, 8, 218)], [5, 5, 5]),
            "common_carotid_artery_left": ([(-10, 22, 176), (-18, 18, 210), (-22, 16, 260)], [4.5, 4.5, 4.5]),
            "subclavian_artery_left": ([(-20, 8, 176), (-40, 0, 205), (-80, 5, 220)], [5, 5, 5]),
        }
        for name, (pts, rad) in branches.items():
            self.tube(pts, rad, LABEL[name], TISSUE["artery_blood"], inside=cav, keep=[LABEL["esophagus"]])
        # Venous return to the right atrium.
        veins = {
            "brachiocephalic_vein_left": ([(-75, 22, 212), (-30, 35, 200), (20, 34, 188)], [7, 7, 8]),
            "brachiocephalic_vein_right": ([(70, 18, 215), (40, 28, 202), (22, 32, 190)], [7, 7, 8]),
            "superior_vena_cava": ([(22, 32, 190), (24, 32, 140), (22, 28, 95)], [9.5, 10, 10]),
        }
        for name, (pts, rad) in veins.items():
            self.tube(pts, rad, LABEL[name], TISSUE["vein_blood"], inside=cav, keep=[LABEL["aorta"]])
        ivc = [
            (18, fs(-130, 18), -130), (22, fs(-80, 14), -80), (24, fs(-30, 12), -30), (26, fs(5, 14), 5),
            (24, 14, 30), (18, 22, 50),
        ]
        self.tube(ivc, [10, 11, 12, 12, 12, 12], LABEL["inferior_vena_cava"], TISSUE["vein_blood"],
                  inside=cav, keep=[LABEL["aorta"]])
        # Iliac vessels from the aortic bifurcation (L4) and the IVC confluence (L5).
        bif = aorta[-1]
        for side, where in ((1, "right"), (-1, "left")):
            art, vein = LABEL[f"iliac_artery_{where}"], LABEL[f"iliac_vena_{where}"]
            artery = [bif, (30 * side, fs(-125, 10), -125), (40 * side, 10, -165), (52 * side, 32, -205),
                      (58 * side, 42, -255)]
            self.tube(artery, [9, 7, 6.5, 6, 6], art, TISSUE["artery_blood"], inside=cav)
            venous = [ivc[0], (30 * side, fs(-145, 4), -145), (34 * side, -2, -170), (44 * side, 24, -205),
                      (48 * side, 36, -255)]
            self.tube(venous, [9, 8, 8, 8, 8], vein, TISSUE["vein_blood"], inside=cav, keep=[art])
        # Portal venous system: splenic vein + SMV -> confluence -> portal vein -> right/left branches.
        portal = LABEL["portal_vein_and_splenic_vein"]
        conf = (6, 28, -40)
        for pts, rad in (
            ([conf, (22, 26, -25), (40, 18, -10), (65, 5, -2), (88, -5, 6)], [7.5, 8, 7, 5.5, 4]),
            ([(40, 18, -10), (15, 30, -2), (-10, 42, 2)], [6, 5, 4]),
            ([conf, (-22, 26, -32), (-48, 12, -24), (-75, -10, -14)], [6, 5.5, 5, 5]),
            ([conf, (10, 40, -60), (12, 58, -95)], [7, 6, 5]),
        ):
            self.tube(pts, rad, portal, TISSUE["portal_blood"], inside=cav,
                      keep=[LABEL["aorta"], LABEL["inferior_vena_cava"]])
        # Superior mesenteric artery and renal vessels (not labelled in the "total" task).
        self.tube([(-8, fs(-28, 8), -28), (-5, 32, -45), (-3, 50, -70), (0, 62, -100)], [4, 4, 3.5, 3],
                  0, TISSUE["artery_blood"], inside=cav, keep=[LABEL["aorta"], LABEL["duodenum"]])
        for side, name in ((1, "kidney_right"), (-1, "kidney_left")):
            c = self.kidney_centers[name]
            hilum = c + np.array([-side * 24.0, 12.0, 0.0])
            self.tube([(-8, fs(c[2], 6), c[2] + 8), hilum], [3.5, 3.0], 0, TISSUE["artery_blood"],
                      inside=cav, keep=[LABEL["aorta"], LABEL["inferior_vena_cava"]])
            start = (24, fs(c[2], 14), c[2]) if side > 0 else (-8, fs(c[2], 24), c[2] + 2)
            self.tube([hilum + np.array([0, 6, -4]), start, (22, fs(c[2], 14), c[2])], [5, 5, 5], 0,
                      TISSUE["vein_blood"], inside=cav, keep=[LABEL["aorta"], LABEL["inferior_vena_cava"]])
        # Pulmonary trunk and arteries to the hila (label kept: lung or mediastinum).
        trunk = [(-8, 58, 95), (-15, 45, 118), (-22, 30, 128)]
        self.tube(trunk, [13, 13, 12], 0, TISSUE["pulmonary_blood"], inside=cav,
                  keep=[LABEL["heart"], LABEL["aorta"]])
        left_pa = [(-22, 30, 128), (-45, 10, 132), (-56, -4, 128)]
        right_pa = [(-22, 30, 128), (0, 18, 126), (25, 12, 124), (46, 2, 120)]
        for pts in (left_pa, right_pa):
            self.tube(pts, [10] * len(pts), 0, TISSUE["pulmonary_blood"], inside=cav,
                      keep=[LABEL["aorta"], LABEL["superior_vena_cava"], LABEL["esophagus"]])
        lobes = [LABEL[n] for n in TOTALSEGMENTATOR_TOTAL.values() if n.startswith("lung_")]
        hila = [np.array((46.0, 2.0, 120.0)), np.array((-56.0, -4.0, 128.0))]
        for hilum in hila:
            self.vessel_tree(hilum, 6.0, lobes)
        self.small_lung_vessels(hila, lobes)

    def vessel_tree(self, root: np.ndarray, radius: float, within: Sequence[int]) -> None:
        """Pulmonary arteries branching from a hilum toward every lobe, with bronchi beside the
        larger ones; painted only inside the lungs (their labels are kept)."""
        side = 1.0 if root[0] > 0 else -1.0
        stems = [
            (0.3 * side, -0.2, 1.0), (0.5 * side, 0.6, 0.8), (side, 0.1, 0.3), (side, -0.5, 0.0),
            (0.5 * side, 0.8, -0.4), (0.4 * side, -0.8, -0.5), (0.6 * side, -0.1, -1.0), (0.2 * side, -0.6, -0.9),
        ]
        smallest = max(2.0, 0.4 * float(self.spacing.min()))
        stack = [(root, _unit(d), radius, 40.0, 0) for d in stems]
        while stack:
            p, d, r, length, gen = stack.pop()
            end = p + d * length
            self.tube([p, end], [r, r * 0.85], None, TISSUE["pulmonary_blood"], only=within)
            if gen <= 1:
                # The bronchus runs beside its artery: a thin wall around air.
                offset = _frame(d)[1] * (1.6 * r + 1.0)
                br = [p + offset, end + offset]
                self.tube(br, [0.75 * r + 1.2, 0.65 * r + 1.2], None, TISSUE["soft_tissue"], only=within)
                self.tube(br, [0.75 * r, 0.65 * r], None, TISSUE["air"], only=within)
            if r * 0.7 < smallest:
                continue
            for _ in range(2):
                kink = self.rng.normal(0.0, 0.45, size=3)
                stack.append((end, _unit(d + kink), r * 0.7, length * 0.76, gen + 1))

    def small_lung_vessels(self, hila: Sequence[np.ndarray], lobes: Sequence[int]) -> None:
        """Peripheral vessels: random curves where two smooth fields are both near zero, thicker
        toward the hila (the branches of the explicit tree end ~2 mm wide)."""
        reg = self.region((-140, -110, -40), (140, 110, 235))
        if reg is None:
            return
        f1 = _smooth_field(self.rng, reg.shape, self.spacing, 14.0)
        f2 = _smooth_field(self.rng, reg.shape, self.spacing, 14.0)
        near = np.minimum.reduce(
            [np.sqrt((reg.x - h[0]) ** 2 + (reg.y - h[1]) ** 2 + (reg.z - h[2]) ** 2) for h in hila]
        )
        width = 0.06 * (1.0 + 1.5 * np.exp(-near / 50.0))
        vessels = (np.abs(f1) < width) & (np.abs(f2) < width)
        self.paint(reg, vessels, None, TISSUE["pulmonary_blood"], only=lobes)

    def airways(self) -> None:
        """Trachea from the neck to the carina and the main bronchi (labelled trachea)."""
        ex = self.esophagus_path()[0]
        top = (0.0, ex[0][1] + 21.0, 250.0)
        mid = (0.0, ex[2][1] + 21.0, 170.0)
        carina = np.array((0.0, ex[2][1] + 17.0, 145.0))
        for pts, rad in (
            ([top, mid, carina], [9.0, 9.0, 8.5]),
            ([carina, carina + (22.0, -5.0, -9.0), (45.0, carina[1] - 10.0, 128.0)], [7.0, 6.5, 6.0]),
            ([carina, carina + (-25.0, -4.0, -6.0), (-52.0, carina[1] - 10.0, 135.0)], [7.0, 6.5, 6.0]),
        ):
            self.hollow(pts, rad, LABEL["trachea"], wall_mm=2.0, wall=TISSUE["soft_tissue"], lumen=TISSUE["air"],
                        inside=self.cavity)

    def muscles(self) -> None:
        """Paraspinal (autochthon) and iliopsoas muscles."""
        body = self.body
        for side, name in ((1, "autochthon_right"), (-1, "autochthon_left")):
            reg = self.region((side * 5 - 60, -140, -225), (side * 5 + 60, 0, 250))
            if reg is None:
                continue
            _, _, post = self.cross_section(reg.z, "muscle")
            back, front = -post + 2.0, self.canal(reg.z)[0]
            half_d, cy = (front - back) / 2, (front + back) / 2
            half_w = np.interp(reg.z, [-225, -150, -60, 0, 250], [14, 22, 22, 20, 18]).astype(np.float32)
            m = np.abs((reg.x - side * (half_w + 5.0)) / half_w) ** 3 + np.abs((reg.y - cy) / half_d) ** 3
            m = (m < 1.0 + 0.1 * self.shape_field[reg.sl]) & self.layer_mask(reg, "muscle")
            self.paint(reg, m, LABEL[name], TISSUE["muscle"])
        for side, name in ((1, "iliopsoas_right"), (-1, "iliopsoas_left")):
            pts, rad = [], []
            for z, dx, dy, r in ((-5, 6, -2, 6), (-50, 13, 0, 13), (-95, 18, 3, 18), (-130, 22, 8, 22)):
                rx, _ = self.spine_rx_ry(z)
                pts.append((side * (rx + dx), float(self.spine_y(z)) + dy, z))
                rad.append(r)
            pts += [(side * 62, 5, -170), (side * 75, 30, -215), (side * 78, 38, -255)]
            rad += [22, 20, 18]
            vessels = [LABEL[n] for n in ("aorta", "inferior_vena_cava", "iliac_artery_left", "iliac_artery_right",
                                          "iliac_vena_left", "iliac_vena_right")]
            self.tube(pts, rad, LABEL[name], TISSUE["muscle"], warp=0.08, inside=body, keep=vessels)

    def spine(self) -> None:
        """C7..L5: bodies with discs, pedicles and laminae around the canal, spinous and transverse
        processes; the canal with CSF and the cord (down to L1/L2); the sacrum with S1."""
        viscera = [LABEL[n] for n in (
            "liver", "spleen", "stomach", "pancreas", "kidney_left", "kidney_right", "gallbladder", "duodenum",
            "small_bowel", "colon", "adrenal_gland_left", "adrenal_gland_right", "urinary_bladder")]
        disc_above = 4.0
        for name, lo, hi, rx, ry, disc in self.vertebrae:
            lumbar = name.startswith("L")
            label = LABEL[f"vertebrae_{name}"]
            zc, h = (lo + hi) / 2, hi - lo
            yb = float(self.spine_y(zc))
            rc = 9.5 if lumbar else 7.5
            yc = yb - ry - rc + 2.0
            reg = self.region((-70, yb - 110, lo - 0.5 * h), (70, yb + ry + 9, hi + 2))
            if reg is None:
                continue
            x, y, z = reg.x, reg.y, reg.z
            yb_z = self.spine_y(z)
            body = ((x / rx) ** 2 + ((y - yb_z) / ry) ** 2 < 1.0) & (z > lo + disc / 2) & (z < hi - disc_above / 2)
            disc_above = disc
            discs = ((x / rx) ** 2 + ((y - yb_z) / ry) ** 2 < 0.95) & (z <= lo + disc / 2) & (z >= lo - disc / 2)
            in_arch = (z > lo + 0.15 * h) & (z < hi - 0.1 * h)
            r2 = x**2 + (y - yc) ** 2
            ring = (r2 < (rc + 6.5) ** 2) & in_arch & (y < yb_z)
            _, _, post = self.cross_section(z, "muscle")
            tip = -post + 14.0
            drop = 0.0 if lumbar else 0.45 * h
            spinous = (np.abs(x) < 4.5) & (y < yc) & (y > tip)
            spinous &= (z > lo + 0.1 * h - drop) & (z < hi - 0.2 * h - drop * 0.6)
            reach = 17.0 if lumbar else 14.0
            tx = ((np.abs(x) - (rc + reach)) / (reach - 2.0)) ** 2 + ((y - yc - 3.0) / 6.0) ** 2
            transverse = (tx + ((z - zc - 0.1 * h) / 6.0) ** 2 < 1.0)
            # Diaphragmatic crura and prevertebral soft tissue keep the viscera off the bone.
            margin = ((x / (rx + 7.0)) ** 2 + ((y - yb_z) / (ry + 7.0)) ** 2 < 1.0) & (z > lo - disc) & (z < hi)
            self.paint(reg, margin, 0, TISSUE["muscle"], only=viscera)
            self.paint(reg, discs, 0, TISSUE["disc"])
            self.paint(reg, body | ring | spinous | transverse, label, TISSUE["cortical_bone"])
        self.sacrum()
        # Spinal canal (CSF) and cord.
        reg = self.region((-20, -120, -260), (20, 30, 260))
        if reg is not None:
            z = reg.z
            yc, rc = self.canal(z)
            r2 = reg.x**2 + (reg.y - yc) ** 2
            self.paint(reg, r2 < rc**2, 0, TISSUE["csf"])
            cord = (r2 < (0.55 * rc) ** 2) & (z > self.level("L1") - 10.0)
            self.paint(reg, cord, LABEL["spinal_cord"], TISSUE["spinal_cord"])

    def canal(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre y and radius (mm) of the spinal (sacral) canal at heights z."""
        rc = np.interp(z, [-150, -60, 0, 260], [8.0, 9.5, 8.0, 7.5]).astype(np.float32)
        ry = np.interp(z, [-260, -150, -20, 220], [12.0, 17.0, 17.0, 11.0]).astype(np.float32)
        yc = self.spine_y(z) - ry - rc + 2.0
        sacral = z < self.sacrum_top
        yc = np.where(sacral, self.sacrum_y(z) - 0.8 * self.sacrum_half_depth(z), yc)
        rc = np.where(sacral, np.maximum(3.0, rc * self.sacrum_half_depth(z) / 18.0), rc)
        return yc.astype(np.float32), rc.astype(np.float32)

    def sacrum_y(self, z: np.ndarray) -> np.ndarray:
        t = np.clip((self.sacrum_top - z) / 100.0, 0.0, 1.2)
        return float(self.spine_y(self.sacrum_top)) - 25.0 * t - 20.0 * t**2

    def sacrum_half_depth(self, z: np.ndarray) -> np.ndarray:
        t = np.clip((self.sacrum_top - z) / 100.0, 0.0, 1.2)
        return 18.0 - 9.0 * t

    def sacrum(self) -> None:
        """A curved wedge: wide alae at S1, tapering and curving posteriorly toward the coccyx."""
        top = self.sacrum_top
        reg = self.region((-70, -140, -270), (70, 20, top))
        if reg is None:
            return
        t = np.clip((top - reg.z) / 100.0, 0.0, 1.2)
        half_w = 52.0 * (1 - t) + 14.0 * t
        half_d = self.sacrum_half_depth(reg.z)
        cy = self.sacrum_y(reg.z)
        # Alae widen backward: a rounded rectangle whose width grows toward the posterior half.
        m = (np.abs(reg.x) / half_w) ** 4 + ((reg.y - cy) / half_d) ** 2 < 1.0
        body = (reg.x / np.minimum(half_w, 25.0)) ** 2 + ((reg.y - cy) / half_d) ** 2 < 1.0
        s1 = reg.z > top - 28.0
        self.paint(reg, m & s1, LABEL["vertebrae_S1"], TISSUE["cortical_bone"])
        self.paint(reg, m & ~s1, LABEL["sacrum"], TISSUE["cortical_bone"])
        self.paint(reg, body & (reg.z > top - 30) & (reg.z < top - 26), 0, TISSUE["disc"])

    def pelvis(self) -> None:
        """Hip bones: iliac wings, acetabulum, pubic and ischial rami; femoral heads; the iliacus
        on the inner wing (part of iliopsoas).

        In each axial section the wing is an arc concave medially, from the sacroiliac joint
        (posterior-medial) round the flank to the anterior superior iliac spine; lower down the
        arc shortens, thickens and moves laterally onto the acetabulum.
        """
        crest = -118.0 + self.rng.uniform(-5, 5)
        acetabulum = -208.0
        reg = self.region((-135, -110, acetabulum), (135, 90, crest))
        if reg is None:
            return
        x, y, z = reg.x, reg.y, reg.z
        s = np.clip((crest - z) / (crest - acetabulum), 0.0, 1.0)
        cx, radius = 55.0 + 28.0 * s, 65.0 * (1.0 - 0.6 * s)
        thick = 7.0 + 9.0 * s**2
        back = np.deg2rad(-105.0 + 55.0 * np.clip((s - 0.55) / 0.45, 0.0, 1.0))  # SI joint, then the notch
        front = np.deg2rad(55.0 - 25.0 * s)
        for side, name, muscle in ((1, "hip_right", "iliopsoas_right"), (-1, "hip_left", "iliopsoas_left")):
            dx = side * x - cx
            r = np.sqrt(dx**2 + y**2)
            theta = np.arctan2(y, dx)
            arc = (theta > back) & (theta < front)
            wing = arc & (np.abs(r - radius) < thick / 2)
            iliacus = arc & (r < radius - thick / 2) & (r > radius - thick / 2 - 16.0) & (theta > np.deg2rad(-60.0))
            self.paint(reg, iliacus & (side * x > 0), LABEL[muscle], TISSUE["muscle"],
                       keep=[LABEL["colon"], LABEL["small_bowel"], LABEL["urinary_bladder"]])
            self.paint(reg, wing & (side * x > 0), LABEL[name], TISSUE["cortical_bone"])
        for side, name, femur in ((1, "hip_right", "femur_right"), (-1, "hip_left", "femur_left")):
            head_c = np.array([side * 92.0, 8.0, -216.0])
            got = self.ellipsoid((side * 86.0, 5.0, -212.0), (28.0, 34.0, 30.0))
            if got is not None:
                r, f = got
                self.paint(r, f < 1, LABEL[name], TISSUE["cortical_bone"])
            self.tube([(side * 75, 22, -222), (side * 40, 55, -232), (side * 6, 68, -240)], [10, 9, 9],
                      LABEL[name], TISSUE["cortical_bone"])
            ischium = [(side * 76, -18, -220), (side * 62, -32, -265)]
            self.tube(ischium, [12, 12], LABEL[name], TISSUE["cortical_bone"])
            got = self.ellipsoid(head_c, (23.0, 23.0, 23.0))
            if got is not None:
                r, f = got
                self.paint(r, f < 1, LABEL[femur], TISSUE["cortical_bone"])
                self.paint(r, (f >= 1) & (f < 1.2), 0, TISSUE["cartilage"], only=[LABEL[name]])

    def thoracic_cage(self) -> None:
        """Twelve pairs of ribs from the vertebrae around the chest wall, costal cartilages, sternum."""
        phi_end = {1: 150, 2: 150, 3: 150, 4: 150, 5: 150, 6: 150, 7: 150, 8: 140, 9: 132, 10: 124, 11: 105, 12: 80}
        drop = {1: 40.0, 2: 55.0}
        for k in range(1, 13):
            name = f"T{k}"
            _, lo, hi, rx, ry, _ = next(v for v in self.vertebrae if v[0] == name)
            z0 = lo + 0.7 * (hi - lo)
            yb = float(self.spine_y(z0))
            d = drop.get(k, 70.0) + self.rng.uniform(-6, 6)
            radius = 5.0 if k == 1 else (4.0 if k >= 11 else 4.5)
            for side in (1, -1):
                head, tubercle = (side * (rx + 2.0), yb - 0.3 * ry, z0), (side * (rx + 22.0), yb - ry - 10.0, z0)
                pts = [np.array(head), np.array(tubercle)]
                for phi in np.deg2rad(np.arange(28.0, phi_end[k] + 1e-6, 8.0)):
                    z = z0 - d * (1 - math.cos(phi)) / 2
                    pts.append(self.wall_point(z, phi, side, "cavity", grow_mm=radius + 0.5))
                self.tube(pts, [radius] * len(pts), LABEL[f"rib_{'right' if side > 0 else 'left'}_{k}"],
                          TISSUE["cortical_bone"], step_mm=6.0)
                if k <= 10:
                    end = pts[-1]
                    z_end = end[2] + (0.0 if k <= 7 else 8.0 * (k - 7))
                    phi_c = np.deg2rad(170.0 if k <= 7 else 158.0)
                    tip = self.wall_point(z_end, phi_c, side, "cavity", grow_mm=radius + 0.5)
                    self.tube([end, (end + tip) / 2 + (0, 0, 2.0), tip], [radius * 0.9] * 3,
                              LABEL["costal_cartilages"], TISSUE["cartilage"], step_mm=5.0)
        # Sternum: manubrium at T2-T3, body down to the xiphoid at T9-T10.
        top, bottom = self.level("T2") - 12.0, self.level("T10") - 8.0
        reg = self.region((-30, 0, bottom), (30, 125, top))
        if reg is not None:
            _, ant, _ = self.cross_section(reg.z, "cavity")
            half_w = np.interp(reg.z, [bottom, bottom + 20, top - 40, top - 30, top], [6, 14, 14, 24, 24])
            m = (np.abs(reg.x) < half_w) & (reg.y > ant + 1.0) & (reg.y < ant + 13.0)
            self.paint(reg, m, LABEL["sternum"], TISSUE["cortical_bone"])

    def bone_marrow(self) -> None:
        """Cancellous core inside every bone, under a cortex one voxel (~``CORTEX_MM``) thick."""
        bone = self.tissue == TISSUE["cortical_bone"]
        steps = max(1, int(round(CORTEX_MM / float(self.spacing.max()))))
        core = ndimage.binary_erosion(bone, iterations=steps)
        self.tissue[core] = TISSUE["cancellous_bone"]


def _lookup(labels: Sequence[int]) -> np.ndarray:
    """Boolean table over uint8 label ids: True for the given ones."""
    table = np.zeros(256, bool)
    table[list(labels)] = True
    return table


def _coarse_field(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray, scale_mm: float
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A unit-variance random field on a coarse grid (cells of ``scale_mm / 2``) covering the
    volume, and per axis the coarse coordinate of every voxel."""
    step = scale_mm / 2.0
    extent = np.asarray(shape) * spacing
    coarse_shape = np.maximum(4, np.ceil(extent / step).astype(int) + 3)
    coarse = ndimage.gaussian_filter(rng.standard_normal(tuple(coarse_shape)), 1.0, mode="wrap")
    coarse = ((coarse - coarse.mean()) / coarse.std()).astype(np.float32)
    # Voxel i sits at coarse coordinate (i * spacing) / step + 1 (one coarse cell of margin).
    coords = [(np.arange(n) * s / step + 1.0).astype(np.float32) for n, s in zip(shape, spacing)]
    return coarse, coords


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray, scale_mm: float
) -> np.ndarray:
    """Unit-variance smooth random field (correlation length ~``scale_mm``) at grid resolution."""
    return _trilinear(*_coarse_field(rng, shape, spacing, scale_mm))


def _trilinear(coarse: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
    """Separable linear interpolation of a coarse field at per-axis coordinates (outer product grid)."""
    out = coarse
    for axis, c in enumerate(coords):
        i0 = np.clip(np.floor(c).astype(int), 0, coarse.shape[axis] - 2)
        shape = [1, 1, 1]
        shape[axis] = len(c)
        w = (c - i0).astype(np.float32).reshape(shape)
        low = np.take(out, i0, axis=axis)
        out = np.take(out, i0 + 1, axis=axis)
        out -= low
        out *= w
        out += low
    return out


def _fine_noise_gain(sigma_vox: np.ndarray) -> float:
    """High-pass standard deviation of unit white noise after the point-spread Gaussian.

    The high pass is the one :func:`datasets_pasta.bases.estimate_noise_hu` measures with
    (image minus its 1-voxel Gaussian, divided by 0.95), computed exactly on an impulse.
    """
    size = 2 * int(np.ceil(4 * max(float(sigma_vox.max()), 1.0))) + 9
    impulse = np.zeros((size,) * 3)
    impulse[(size // 2,) * 3] = 1.0
    kernel = ndimage.gaussian_filter(impulse, sigma_vox, truncate=PSF_TRUNCATE)
    residual = kernel - ndimage.gaussian_filter(kernel, 1.0)
    return float(np.sqrt((residual**2).sum()) / 0.95)


def _hu_image(builder: _PhantomBuilder, phase: str, rng: np.random.Generator) -> np.ndarray:
    """Noiseless HU from the tissue map: phase table, per-scan jitter, smooth texture, mottling."""
    col = PHASES.index(phase)
    table = np.array([v[col] for v in TISSUE_HU.values()], dtype=np.float32)
    plain = np.array([v[0] for v in TISSUE_HU.values()], dtype=np.float32)
    amp = np.array([v[3] for v in TISSUE_HU.values()], dtype=np.float32)
    # Contrast timing and organ baselines vary a little from scan to scan.
    baseline = np.where(np.abs(plain) < 200, rng.normal(0.0, 3.0, table.shape), 0.0)
    table = (plain + (table - plain) * rng.uniform(0.92, 1.08) + baseline).astype(np.float32)
    # A surface voxel larger than the cortex holds cortex and marrow (partial volume).
    cortex_fraction = min(1.0, CORTEX_MM / float(builder.spacing.mean()))
    cortical, cancellous = TISSUE["cortical_bone"], TISSUE["cancellous_bone"]
    table[cortical] = table[cancellous] + cortex_fraction * (table[cortical] - table[cancellous])
    tissue = builder.tissue
    hu = table[tissue]
    texture = _smooth_field(rng, builder.shape, builder.spacing, 24.0)
    texture *= amp[tissue]
    hu += texture
    del texture
    lung = np.nonzero(tissue == TISSUE["lung"])
    hu[lung] -= 0.3 * builder.canon[1][lung[1]]  # dependent (posterior) lung is denser
    coarse, coords = _coarse_field(rng, builder.shape, builder.spacing, 6.0)
    for name, a in _MOTTLE_HU.items():
        where = np.nonzero(tissue == TISSUE[name])
        mottle = ndimage.map_coordinates(coarse, [c[i] for c, i in zip(coords, where)], order=1)
        hu[where] += a * mottle
        if name == "stool":
            hu[tuple(i[mottle > 1.1] for i in where)] = -900.0  # gas bubbles
    return hu


def _positive_triple(value: object, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.ndim == 0:
        arr = np.repeat(arr, 3)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{what} must be a positive number or three positive numbers (mm), got {value!r}")
    return arr


def _check_args(spacing_mm, phase: str, noise_hu: float, seed: int, fov) -> tuple[np.ndarray, np.ndarray]:
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}: use one of {list(PHASES)}")
    spacing = _positive_triple(spacing_mm, "spacing_mm")
    fov_mm = _positive_triple(fov, "field_of_view_mm")
    if isinstance(noise_hu, bool) or not isinstance(noise_hu, (int, float, np.number)) or not noise_hu > 0:
        raise ValueError(f"noise_hu must be a positive number of HU, got {noise_hu!r}")
    if not math.isfinite(float(noise_hu)):
        raise ValueError(f"noise_hu must be finite, got {noise_hu!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    shape = np.maximum(1, np.round(fov_mm / spacing)).astype(int)
    if np.any(shape < 8):
        raise ValueError(
            f"field_of_view_mm {tuple(fov_mm)} holds fewer than 8 voxels of {tuple(spacing)} mm along an axis"
        )
    if int(np.prod(shape)) > MAX_VOXELS:
        raise ValueError(
            f"a {tuple(shape)} grid ({int(np.prod(shape)):,} voxels) is too large: use a coarser spacing_mm "
            f"or a smaller field_of_view_mm (at most {MAX_VOXELS:,} voxels)"
        )
    return spacing, shape


def make_phantom(
    *,
    spacing_mm: float | tuple[float, float, float] = 1.5,
    phase: str = "venous",
    noise_hu: float = 12.0,
    seed: int = 0,
    field_of_view_mm: tuple[float, float, float] = (360.0, 270.0, 480.0),
) -> HealthyBase:
    """A procedural healthy torso CT (lung apices to pelvis) with its organ label map.

    Args:
        spacing_mm: voxel size (mm), one number or (x, y, z).
        phase: contrast phase, ``plain`` / ``arterial`` / ``venous``; sets organ and vessel HU
            (bone, fat, air and fluids do not change).
        noise_hu: scanner noise level (HU): the fine-scale standard deviation as
            :func:`datasets_pasta.bases.estimate_noise_hu` measures it. The noise is white noise
            correlated by the scanner point spread (Gaussian, sigma ``PSF_SIGMA_MM``).
        seed: varies anatomy (body habitus, organ positions, sizes and shapes by ~±10 %), HU
            baselines and noise. Same arguments give identical arrays.
        field_of_view_mm: grid extent (x, y, z) in mm, centred on the body.

    Returns:
        A :class:`HealthyBase` (int16 HU, uint8 TotalSegmentator "total" ids, RAS+ affine with the
        requested spacing), ``base_id`` ``phantom-<seed>``.

    Raises:
        ValueError: unknown phase, non-positive spacing, field of view or noise, negative seed,
            or a grid too large to build.
    """
    spacing, shape = _check_args(spacing_mm, phase, noise_hu, seed, field_of_view_mm)
    builder = _PhantomBuilder(tuple(int(s) for s in shape), spacing, seed)
    builder.build()
    del builder.shape_field
    rng = np.random.default_rng([seed, 1])
    hu = _hu_image(builder, phase, rng)
    # White noise, then the scanner's point spread: it softens boundaries and correlates the noise.
    sigma = PSF_SIGMA_MM / spacing
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise *= np.float32(noise_hu / _fine_noise_gain(sigma))
    hu += noise
    del noise
    hu = ndimage.gaussian_filter(hu, sigma, truncate=PSF_TRUNCATE)
    ct = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = [float(w[0]) for w in builder.world]
    logger.debug("phantom seed %d: %s voxels of %s mm, phase %s", seed, shape, tuple(spacing), phase)
    return HealthyBase(
        ct_hu=ct,
        organ_map=builder.labels,
        affine=affine,
        label_names=dict(TOTALSEGMENTATOR_TOTAL),
        base_id=f"phantom-{seed}",
        phase=phase,
        noise_hu=float(noise_hu),
    )


__all__ = ["TISSUE_HU", "make_phantom"]
