"""Orthogonal views of a CT with lesion and organ overlays, for people to look at (the Space, figures).

Views follow the radiological convention: axial and coronal show the patient's right on the
viewer's left; axial has anterior up, coronal and sagittal superior up, sagittal anterior on the
left. Volumes are first put in the canonical RAS+ voxel order (:func:`~modeling_pasta.image_io.to_canonical`),
so any input orientation displays the same way, and pixels are stretched to the voxel spacing (mm)
so anatomy keeps its proportions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeling_pasta.image_io import to_canonical
from modeling_pasta.report import voxel_spacing

#: Display windows in HU: name -> (centre, width).
WINDOWS: dict[str, tuple[float, float]] = {"soft tissue": (40, 400), "lung": (-600, 1500), "bone": (400, 1800)}
PLANES = ("axial", "coronal", "sagittal")
#: The axis (of the RAS+ volume) a plane's slider moves along.
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
LESION_RGB = np.array([255, 40, 40], dtype=np.float32)
LESION_ALPHA = 0.55
ORGAN_ALPHA = 0.3


def radiological_axial(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a RAS-ordered volume as radiologists display it (right on the left, anterior up)."""
    return volume[::-1, ::-1, z].T


def radiological_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """A 2D slice of a RAS-ordered volume in display orientation (rows top to bottom, columns left to right)."""
    if plane == "axial":
        return radiological_axial(volume, index)
    if plane == "coronal":
        return volume[::-1, index, ::-1].T
    if plane == "sagittal":
        return volume[index, ::-1, ::-1].T
    raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}")


def _pixel_mm(spacing_mm: tuple[float, float, float], plane: str) -> tuple[float, float]:
    """(row, column) pixel size in mm of a plane's display slice."""
    x, y, z = spacing_mm
    return {"axial": (y, x), "coronal": (z, x), "sagittal": (z, y)}[plane]


def organ_palette(labels: int = 256, seed: int = 7) -> np.ndarray:
    """A fixed RGB colour per organ id (0 is unused), bright enough to see on grey CT."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(60, 256, size=(labels, 3)).astype(np.float32)
    palette[:, 0] = np.minimum(palette[:, 0], 150)  # keep organs away from the lesion red
    return palette


#: The palette every view uses (computed once: views are re-rendered on each slider move).
ORGAN_PALETTE = organ_palette()


@dataclass
class CaseViews:
    """A CT and its masks in canonical RAS+ order, ready to render.

    Attributes:
        ct_hu: the CT in HU.
        spacing_mm: voxel size along the RAS+ axes.
        lesion_mask: 0 background, k = lesion k (or None).
        organ_map: organ ids (or None).
    """

    ct_hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    lesion_mask: np.ndarray | None = None
    organ_map: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        ct_hu: np.ndarray,
        affine: np.ndarray,
        lesion_mask: np.ndarray | None = None,
        organ_map: np.ndarray | None = None,
    ) -> "CaseViews":
        """Views of arrays on one grid with the given voxel -> RAS+ affine (any orientation)."""
        canonical, canonical_affine, _ = to_canonical(np.asarray(ct_hu), np.asarray(affine))
        spacing = tuple(float(s) for s in voxel_spacing(canonical_affine))

        def reorient(mask):
            if mask is None:
                return None
            if mask.shape != np.shape(ct_hu):
                raise ValueError(f"mask of shape {mask.shape} does not match the CT's {np.shape(ct_hu)}")
            return to_canonical(np.asarray(mask), np.asarray(affine))[0]

        return cls(canonical, spacing, reorient(lesion_mask), reorient(organ_map))

    def size(self, plane: str) -> int:
        """Number of slices of ``plane``."""
        return int(self.ct_hu.shape[PLANE_AXIS[plane]])

    def lesion_center(self, lesion_id: int | None = None) -> tuple[int, int, int]:
        """Voxel (RAS+) at the centre of a lesion (the largest one by default), else of the volume."""
        if self.lesion_mask is not None and self.lesion_mask.any():
            if lesion_id is None:
                counts = np.bincount(self.lesion_mask.ravel().astype(np.int64))
                counts[0] = 0
                lesion_id = int(np.argmax(counts))
            points = np.argwhere(self.lesion_mask == lesion_id)
            if len(points):
                return tuple(int(v) for v in np.round(points.mean(axis=0)))
        return tuple(s // 2 for s in self.ct_hu.shape)

    def render(
        self,
        plane: str,
        index: int,
        *,
        window: str | tuple[float, float] = "soft tissue",
        organs: bool = True,
        lesions: bool = True,
        max_pixels: int = 512,
    ) -> np.ndarray:
        """One view as an RGB uint8 image: the windowed CT with organ and lesion overlays.

        Args:
            plane: ``axial``, ``coronal`` or ``sagittal``.
            index: slice index along the plane's axis (clipped to the volume).
            window: a :data:`WINDOWS` name or (centre, width) in HU.
            organs / lesions: draw those overlays.
            max_pixels: the longer side of the returned image.
        """
        index = int(np.clip(index, 0, self.size(plane) - 1))
        centre, width = WINDOWS[window] if isinstance(window, str) else window
        grey = radiological_slice(self.ct_hu, plane, index).astype(np.float32)
        grey = np.clip((grey - (centre - width / 2)) / width, 0.0, 1.0) * 255.0
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        if organs and self.organ_map is not None:
            organ = radiological_slice(self.organ_map, plane, index).astype(np.int64)
            inside = organ > 0
            colours = ORGAN_PALETTE[organ[inside] % len(ORGAN_PALETTE)]
            rgb[inside] = (1 - ORGAN_ALPHA) * rgb[inside] + ORGAN_ALPHA * colours
        if lesions and self.lesion_mask is not None:
            lesion = radiological_slice(self.lesion_mask, plane, index) > 0
            rgb[lesion] = (1 - LESION_ALPHA) * rgb[lesion] + LESION_ALPHA * LESION_RGB
            edge = lesion & ~_eroded(lesion)
            rgb[edge] = LESION_RGB
        return _resize_to_mm(rgb.astype(np.uint8), _pixel_mm(self.spacing_mm, plane), max_pixels)


def _eroded(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def _resize_to_mm(image: np.ndarray, pixel_mm: tuple[float, float], max_pixels: int) -> np.ndarray:
    """Nearest-neighbour resize so a pixel covers the same mm in both directions; longer side ``max_pixels``."""
    height_mm, width_mm = image.shape[0] * pixel_mm[0], image.shape[1] * pixel_mm[1]
    scale = max_pixels / max(height_mm, width_mm)
    height, width = max(int(round(height_mm * scale)), 1), max(int(round(width_mm * scale)), 1)
    rows = np.minimum((np.arange(height) + 0.5) * image.shape[0] / height, image.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * image.shape[1] / width, image.shape[1] - 1).astype(int)
    return image[rows][:, cols]
