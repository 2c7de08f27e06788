"""The structured report: schema, validation, and the one measurement of report fields.

The generator (``datasets_pasta``), the model's heads, ``pasta predict`` and the Space all speak
this schema (``schema_version`` :data:`SCHEMA_VERSION`). Measured fields (size, volume, mean HU,
density, organ, location, adjacency) are computed by :func:`measure_lesion` from the final
voxels — in the generator from the saved CT and lesion mask, at inference from the predicted
mask. CT values are Hounsfield units (HU), lengths millimetres.

Coordinates: arrays may be in any voxel order; every direction-dependent decision (liver
segment, kidney pole, ...) goes through the affine (voxel -> RAS+ world, mm), whose ``+x`` is
the patient's "R" end as NIfTI defines it (the liver has larger ``x`` than the spleen),
``+y`` anterior and ``+z`` superior.

This module is imported relatively by the model files, so it depends on numpy/scipy only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .organs import ORGAN_GROUPS, organ_group, readable_organ

SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class LesionTypeInfo:
    """What the schema knows of a lesion type: its host organ group and whether it is malignant."""

    name: str
    organ: str
    malignant: bool
    readable: str


#: The 15 lesion types of PASTA-Gen (10 malignant, 5 benign); ``organ`` is an :data:`ORGAN_GROUPS` key.
LESION_TYPES: dict[str, LesionTypeInfo] = {
    info.name: info
    for info in (
        LesionTypeInfo("lung_cancer", "lung", True, "lung cancer"),
        LesionTypeInfo("liver_cancer", "liver", True, "liver cancer"),
        LesionTypeInfo("gallbladder_cancer", "gallbladder", True, "gallbladder cancer"),
        LesionTypeInfo("pancreatic_cancer", "pancreas", True, "pancreatic cancer"),
        LesionTypeInfo("bladder_cancer", "urinary_bladder", True, "bladder cancer"),
        LesionTypeInfo("esophageal_cancer", "esophagus", True, "esophageal cancer"),
        LesionTypeInfo("gastric_cancer", "stomach", True, "gastric cancer"),
        LesionTypeInfo("kidney_cancer", "kidney", True, "kidney cancer"),
        LesionTypeInfo("colorectal_cancer", "colon", True, "colorectal cancer"),
        LesionTypeInfo("bone_metastasis", "vertebrae", True, "bone metastasis"),
        LesionTypeInfo("liver_cyst", "liver", False, "liver cyst"),
        LesionTypeInfo("gallstone", "gallbladder", False, "gallstone"),
        LesionTypeInfo("pancreatic_cyst", "pancreas", False, "pancreatic cyst"),
        LesionTypeInfo("kidney_cyst", "kidney", False, "kidney cyst"),
        LesionTypeInfo("kidney_stone", "kidney", False, "kidney stone"),
    )
}

PHASES = ("plain", "arterial", "venous")
DENSITIES = ("hypodense", "isodense", "hyperdense")
DENSITY_VARIATIONS = ("homogeneous", "heterogeneous")
SHAPES = ("round", "oval", "lobulated", "irregular")
MARGINS = ("well_defined", "ill_defined", "lobulated", "spiculated")
ENHANCEMENTS = ("none", "mild", "marked", "rim", "arterial_washout")
TEXTURES = ("solid", "part_solid", "ground_glass", "cystic", "calcified")
RELATIONS = ("clear", "abutting", "invading")
#: Special features: the schema's six plus the extensions this project's lesion models use.
SPECIAL_FEATURES = (
    "necrosis",
    "calcification",
    "cystic_change",
    "fat",
    "air",
    "capsule",
    "wall_thickening",
    "intraluminal_mass",
    "luminal_narrowing",
    "exophytic",
    "lytic",
    "blastic",
    "cortical_breach",
    "layering",
)

#: Categorical report attributes and their classes, in a fixed order (the model's heads use it).
CATEGORICAL_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "density": DENSITIES,
    "density_variation": DENSITY_VARIATIONS,
    "shape": SHAPES,
    "margin": MARGINS,
    "enhancement": ENHANCEMENTS,
    "texture": TEXTURES,
    "relation_to_adjacent": RELATIONS,
}

#: Half-width of the "isodense" band around the organ's own mean HU.
ISODENSE_HU = 10.0


class ReportValidationError(ValueError):
    """A report that does not follow the schema; the message names the offending field."""


@dataclass
class LesionReport:
    """One lesion of a :class:`StructuredReport` (field meanings: ``REPORT_SCHEMA.md``)."""

    id: int
    type: str
    malignant: bool
    organ: str
    location: str
    size_mm: list[float]
    volume_ml: float
    mean_hu: float
    density: str
    density_variation: str
    shape: str
    margin: str
    enhancement: str
    texture: str
    relation_to_adjacent: str
    adjacent_organs: list[str] = field(default_factory=list)
    special_features: list[str] = field(default_factory=list)
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["confidence"] is None:
            del out["confidence"]
        return out


@dataclass
class StructuredReport:
    """The per-scan structured report shared by the corpus, the model and the Space."""

    phase: str
    spacing_mm: list[float]
    lesions: list[LesionReport] = field(default_factory=list)
    impression: str = ""
    modality: str = "CT"
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "modality": self.modality,
            "phase": self.phase,
            "spacing_mm": [float(s) for s in self.spacing_mm],
            "lesions": [lesion.to_dict() for lesion in self.lesions],
            "impression": self.impression,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StructuredReport":
        """Validate ``data`` against the schema and build the typed report.

        Raises:
            ReportValidationError: naming the first field that breaks the schema.
        """
        return validate_report(data)

    @classmethod
    def from_json(cls, text: str) -> "StructuredReport":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ReportValidationError(f"report is not valid JSON: {err}") from err
        return validate_report(data)


def _require(cond: bool, where: str, problem: str) -> None:
    if not cond:
        raise ReportValidationError(f"{where}: {problem}")


def _check_enum(value: Any, allowed: Sequence[str], where: str) -> None:
    _require(value in allowed, where, f"{value!r} is not one of {list(allowed)}")


def _check_number(value: Any, where: str, minimum: float | None = None) -> float:
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value),
        where,
        f"expected a finite number, got {value!r}",
    )
    if minimum is not None:
        _require(value >= minimum, where, f"must be >= {minimum}, got {value!r}")
    return float(value)


def _check_str_list(value: Any, where: str, allowed: Sequence[str] | None = None) -> list[str]:
    _require(isinstance(value, list), where, f"expected a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        _require(isinstance(item, str), f"{where}[{i}]", f"expected a string, got {item!r}")
        if allowed is not None:
            _check_enum(item, allowed, f"{where}[{i}]")
    return list(value)


def validate_report(data: Mapping[str, Any]) -> StructuredReport:
    """Check a report dict against schema :data:`SCHEMA_VERSION`; return the typed report.

    Raises:
        ReportValidationError: naming the offending field and what is wrong with it.
    """
    _require(isinstance(data, Mapping), "report", f"expected a JSON object, got {type(data).__name__}")
    required = {"schema_version", "modality", "phase", "spacing_mm", "lesions", "impression"}
    missing = sorted(required - set(data))
    _require(not missing, "report", f"missing field(s) {missing}")
    _require(
        data["schema_version"] == SCHEMA_VERSION,
        "schema_version",
        f"unsupported version {data['schema_version']!r} (this package writes {SCHEMA_VERSION!r})",
    )
    _check_enum(data["modality"], ("CT", "PET/CT", "MR"), "modality")
    _check_enum(data["phase"], PHASES, "phase")
    spacing = data["spacing_mm"]
    _require(isinstance(spacing, list) and len(spacing) == 3, "spacing_mm", "expected 3 numbers")
    spacing = [_check_number(s, f"spacing_mm[{i}]", minimum=1e-6) for i, s in enumerate(spacing)]
    _require(isinstance(data["impression"], str), "impression", "expected a string")
    _require(isinstance(data["lesions"], list), "lesions", "expected a list")
    lesions = [_validate_lesion(item, f"lesions[{i}]") for i, item in enumerate(data["lesions"])]
    ids = [lesion.id for lesion in lesions]
    _require(len(set(ids)) == len(ids), "lesions", f"lesion ids must be unique, got {ids}")
    return StructuredReport(
        phase=data["phase"],
        spacing_mm=spacing,
        lesions=lesions,
        impression=data["impression"],
        modality=data["modality"],
        schema_version=data["schema_version"],
    )


def _validate_lesion(item: Any, where: str) -> LesionReport:
    _require(isinstance(item, Mapping), where, "expected a JSON object")
    names = {f.name for f in LesionReport.__dataclass_fields__.values()}
    unknown = sorted(set(item) - names)
    _require(not unknown, where, f"unknown field(s) {unknown}")
    missing = sorted(names - {"confidence", "adjacent_organs", "special_features"} - set(item))
    _require(not missing, where, f"missing field(s) {missing}")
    _require(isinstance(item["id"], int) and item["id"] >= 1, f"{where}.id", "expected an integer >= 1")
    _check_enum(item["type"], tuple(LESION_TYPES), f"{where}.type")
    _require(isinstance(item["malignant"], bool), f"{where}.malignant", "expected true or false")
    _require(
        item["malignant"] == LESION_TYPES[item["type"]].malignant,
        f"{where}.malignant",
        f"{item['type']} is {'malignant' if LESION_TYPES[item['type']].malignant else 'benign'}",
    )
    for key in ("organ", "location"):
        _require(isinstance(item[key], str) and item[key], f"{where}.{key}", "expected a non-empty string")
    size = item["size_mm"]
    _require(isinstance(size, list) and len(size) == 3, f"{where}.size_mm", "expected 3 diameters in mm")
    size = [_check_number(s, f"{where}.size_mm[{i}]", minimum=0.0) for i, s in enumerate(size)]
    _require(size == sorted(size, reverse=True), f"{where}.size_mm", "diameters must be largest first")
    _check_number(item["volume_ml"], f"{where}.volume_ml", minimum=0.0)
    _check_number(item["mean_hu"], f"{where}.mean_hu")
    for attr, classes in CATEGORICAL_ATTRIBUTES.items():
        _check_enum(item[attr], classes, f"{where}.{attr}")
    adjacent = _check_str_list(item.get("adjacent_organs", []), f"{where}.adjacent_organs")
    special = _check_str_list(item.get("special_features", []), f"{where}.special_features", SPECIAL_FEATURES)
    confidence = item.get("confidence")
    if confidence is not None:
        confidence = _check_number(confidence, f"{where}.confidence", minimum=0.0)
        _require(confidence <= 1.0, f"{where}.confidence", "must be <= 1")
    return LesionReport(
        id=item["id"],
        type=item["type"],
        malignant=item["malignant"],
        organ=item["organ"],
        location=item["location"],
        size_mm=size,
        volume_ml=float(item["volume_ml"]),
        mean_hu=float(item["mean_hu"]),
        density=item["density"],
        density_variation=item["density_variation"],
        shape=item["shape"],
        margin=item["margin"],
        enhancement=item["enhancement"],
        texture=item["texture"],
        relation_to_adjacent=item["relation_to_adjacent"],
        adjacent_organs=adjacent,
        special_features=special,
        confidence=confidence,
    )


# --------------------------------------------------------------------------------------------
# Measurement: the one function that computes report fields from voxels.
# --------------------------------------------------------------------------------------------


@dataclass
class LesionMeasurement:
    """Report fields measured from a lesion mask, its CT (HU) and the organ map."""

    organ: str
    organ_label: str
    location: str
    size_mm: list[float]
    volume_ml: float
    mean_hu: float
    organ_mean_hu: float | None
    density: str
    relation_to_adjacent: str
    adjacent_organs: list[str]
    centroid_ras_mm: list[float]

    def report_fields(self) -> dict[str, Any]:
        """The subset that goes into a :class:`LesionReport`."""
        return {
            "organ": self.organ,
            "location": self.location,
            "size_mm": self.size_mm,
            "volume_ml": self.volume_ml,
            "mean_hu": self.mean_hu,
            "density": self.density,
            "relation_to_adjacent": self.relation_to_adjacent,
            "adjacent_organs": self.adjacent_organs,
        }


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (column norms of the affine's 3x3 part)."""
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def lesion_diameters_mm(voxels: np.ndarray, affine: np.ndarray) -> list[float]:
    """Three orthogonal diameters (mm, largest first) of a set of voxel indices.

    The mask's voxel centres are mapped to world mm and projected on their principal axes;
    each diameter is the centres' extent along an axis plus the extent of one voxel box
    projected on that axis (so a single voxel measures its own size).
    """
    affine = np.asarray(affine, dtype=float)
    world = voxels @ affine[:3, :3].T
    if len(world) >= 3:
        centred = world - world.mean(axis=0)
        _, vecs = np.linalg.eigh(centred.T @ centred)
        axes = vecs.T[::-1]  # rows, largest variance first
    else:
        axes = np.eye(3)
    proj = world @ axes.T
    voxel_box = np.abs(axes @ affine[:3, :3]).sum(axis=1)
    diameters = proj.max(axis=0) - proj.min(axis=0) + voxel_box
    return sorted((round(float(d), 1) for d in diameters), reverse=True)


def _host_label(
    lesion_crop: np.ndarray, organs_crop: np.ndarray, label_names: Mapping[int, str], host: str | None
) -> int | None:
    """The organ label hosting the lesion: most overlapped group, then its most overlapped label."""
    ids, counts = np.unique(organs_crop[lesion_crop], return_counts=True)
    keep = ids != 0
    ids, counts = ids[keep], counts[keep]
    if host is not None:
        members = set(ORGAN_GROUPS.get(host, (host,)))
        sel = np.array([label_names.get(int(i)) in members for i in ids], dtype=bool)
        ids, counts = ids[sel], counts[sel]
    if len(ids) == 0:
        return None
    group_count: dict[str, int] = {}
    for i, c in zip(ids, counts):
        name = label_names.get(int(i), str(i))
        key = organ_group(name) or name
        group_count[key] = group_count.get(key, 0) + int(c)
    best_group = max(group_count, key=lambda k: group_count[k])
    in_group = [
        (int(c), int(i))
        for i, c in zip(ids, counts)
        if (organ_group(label_names.get(int(i), str(i))) or label_names.get(int(i), str(i))) == best_group
    ]
    return max(in_group)[1]


def _fraction(value: float, lo: float, hi: float) -> float:
    return 0.5 if hi <= lo else float(np.clip((value - lo) / (hi - lo), 0.0, 1.0))


def _sub_location(organ_label: str, rel: np.ndarray) -> str:
    """Sub-location wording from the lesion centroid's relative position in its organ.

    ``rel`` = (rl, ap, si) in [0, 1]: 0 = patient's right / posterior / inferior end of the
    organ's own bounding box, 1 = left / anterior / superior end.
    """
    rl, ap, si = (float(v) for v in rel)
    group = organ_group(organ_label) or organ_label
    third = lambda v, names: names[min(int(v * 3), 2)]  # noqa: E731
    if group == "liver":
        # Couinaud segments, approximated in the liver's bounding box: Cantlie's line at 60 %
        # of the right-to-left extent, the portal plane at mid-height.
        superior = si >= 0.5
        if rl < 0.6:
            posterior = ap < 0.5
            seg = {(True, True): "VII", (True, False): "VIII", (False, True): "VI", (False, False): "V"}[
                (superior, posterior)
            ]
            return f"right lobe, segment {seg}"
        if rl < 0.6 + 0.15 and ap < 0.3:
            return "caudate lobe, segment I"
        if rl < 0.75:
            return f"left lobe, segment {'IVa' if superior else 'IVb'}"
        return f"left lobe, segment {'II' if superior else 'III'}"
    if group == "lung":
        return readable_organ(organ_label)
    if group == "kidney":
        return f"{readable_organ(organ_label)}, " + third(si, ("lower pole", "interpolar region", "upper pole"))
    if group == "pancreas":
        return third(rl, ("pancreatic head", "pancreatic body", "pancreatic tail"))
    if group == "stomach":
        return third(si, ("gastric antrum", "gastric body", "gastric fundus"))
    if group == "esophagus":
        return third(si, ("lower third of the esophagus", "middle third of the esophagus", "upper third of the esophagus"))
    if group == "colon":
        if si < 0.3 and 0.25 <= rl <= 0.75:
            return "rectosigmoid colon"
        if si > 0.7:
            return "transverse colon"
        return "ascending colon" if rl < 0.5 else "descending colon"
    if group == "urinary_bladder":
        if si > 2 / 3:
            return "bladder dome"
        if si < 1 / 3:
            return "bladder base"
        return "right bladder wall" if rl < 0.5 else "left bladder wall"
    if group == "gallbladder":
        return third(si, ("gallbladder fundus", "gallbladder body", "gallbladder neck"))
    if group == "vertebrae":
        if organ_label == "vertebrae":  # a model's single "vertebrae" class names no level
            return "vertebral body"
        return f"{readable_organ(organ_label).replace(' vertebra', '')} vertebral body"
    return readable_organ(organ_label)


class OrganStatistics:
    """Per-organ quantities that :func:`measure_lesion` needs, computed once per scan.

    Measuring many lesions of one scan (a model's prediction) would otherwise rescan the whole
    volume for every lesion: the host organ's mean HU, its extent, and the nearest organ of a
    lesion outside every organ. Results are identical with and without it.
    """

    def __init__(self, ct_hu: np.ndarray, organ_map: np.ndarray, affine: np.ndarray):
        self.ct_hu, self.organ_map, self.affine = ct_hu, organ_map, np.asarray(affine, dtype=float)
        labels = organ_map.astype(np.int64, copy=False).ravel()
        self.count = np.bincount(labels)
        self.hu_sum = np.bincount(labels, weights=ct_hu.astype(np.float64, copy=False).ravel())
        self._boxes = ndimage.find_objects(organ_map.astype(np.int64, copy=False))
        self._extents: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
        self._nearest: tuple[np.ndarray, ...] | None = None

    def mean_hu_without(self, label: int, lesion_mask: np.ndarray) -> float | None:
        """Mean HU of organ ``label`` outside ``lesion_mask`` (None when nothing is left)."""
        if label >= len(self.count):
            return None
        inside = lesion_mask & (self.organ_map == label)
        count = int(self.count[label]) - int(inside.sum())
        if count <= 0:
            return None
        return float((self.hu_sum[label] - self.ct_hu[inside].astype(np.float64).sum()) / count)

    def world_extent(self, label: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(min, max) RAS+ mm over the centres of organ ``label``'s voxels, or None."""
        if label not in self._extents:
            box = self._boxes[label - 1] if 0 < label <= len(self._boxes) else None
            extent = None
            if box is not None:
                voxels = np.argwhere(self.organ_map[box] == label) + [b.start for b in box]
                world = voxels @ self.affine[:3, :3].T + self.affine[:3, 3]
                extent = (world.min(axis=0), world.max(axis=0))
            self._extents[label] = extent
        return self._extents[label]

    def nearest_label(self, centroid_vox: np.ndarray) -> int | None:
        """The organ label nearest to a voxel position (for lesions outside every organ)."""
        labelled = self.organ_map != 0
        if self._nearest is None:
            if not labelled.any():
                return None
            self._nearest = ndimage.distance_transform_edt(~labelled, return_distances=False, return_indices=True)
        c = tuple(np.clip(np.round(centroid_vox).astype(int), 0, np.array(self.organ_map.shape) - 1))
        ii, jj, kk = self._nearest
        return int(self.organ_map[ii[c], jj[c], kk[c]])


def measure_lesion(
    ct_hu: np.ndarray,
    lesion_mask: np.ndarray,
    organ_map: np.ndarray,
    affine: np.ndarray,
    label_names: Mapping[int, str],
    host_organ: str | None = None,
    organ_statistics: OrganStatistics | None = None,
) -> LesionMeasurement:
    """Measure one lesion's report fields from the final voxels.

    Args:
        ct_hu: CT in HU, 3D.
        lesion_mask: boolean mask of this one lesion, same shape.
        organ_map: organ label map, same shape (healthy anatomy: lesions do not relabel it).
        affine: voxel -> RAS+ world (mm), 4x4.
        label_names: organ label id -> name (e.g. :data:`TOTALSEGMENTATOR_TOTAL`).
        host_organ: optional organ group (or label name) the lesion belongs to; by default the
            organ group the lesion overlaps most.
        organ_statistics: :class:`OrganStatistics` of these ``ct_hu`` / ``organ_map`` / ``affine``,
            shared when measuring several lesions of one scan (faster, same results).

    Returns:
        The measured fields. ``organ`` is the host's group key (``"kidney"``), ``organ_label``
        the specific label (``"kidney_right"``); ``adjacent_organs`` are readable names.

    Raises:
        ValueError: when the arrays disagree in shape or the mask is empty.
    """
    lesion_mask = np.asarray(lesion_mask, dtype=bool)
    if ct_hu.shape != lesion_mask.shape or organ_map.shape != lesion_mask.shape:
        raise ValueError(
            f"shape mismatch: CT {ct_hu.shape}, lesion mask {lesion_mask.shape}, organ map {organ_map.shape}"
        )
    if ct_hu.ndim != 3:
        raise ValueError(f"expected 3D volumes, got {ct_hu.ndim}D")
    voxels = np.argwhere(lesion_mask)
    if len(voxels) == 0:
        raise ValueError("the lesion mask is empty")
    affine = np.asarray(affine, dtype=float)
    spacing = voxel_spacing(affine)
    stats = organ_statistics if organ_statistics is not None else OrganStatistics(ct_hu, organ_map, affine)

    lo = np.maximum(voxels.min(axis=0) - 2, 0)
    hi = np.minimum(voxels.max(axis=0) + 3, lesion_mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    lesion_crop = lesion_mask[box]
    organs_crop = organ_map[box]

    host = _host_label(lesion_crop, organs_crop, label_names, host_organ)
    centroid_vox = voxels.mean(axis=0)
    if host is None:
        host = stats.nearest_label(centroid_vox)
    host_name = label_names.get(host, f"label_{host}") if host is not None else "unknown"
    host_group = organ_group(host_name) or host_name

    mean_hu = float(ct_hu[lesion_mask].mean())
    organ_mean = None
    density = "isodense"
    if host is not None:
        organ_mean = stats.mean_hu_without(host, lesion_mask)
        if organ_mean is not None:
            diff = mean_hu - organ_mean
            density = "isodense" if abs(diff) <= ISODENSE_HU else ("hyperdense" if diff > 0 else "hypodense")

    # Adjacency: organs outside the host's group that the lesion overlaps or touches (26-neighbourhood).
    same_group = {i for i, n in label_names.items() if (organ_group(n) or n) == host_group}
    overlap_ids, overlap_counts = np.unique(organs_crop[lesion_crop], return_counts=True)
    invaded = [(int(c), int(i)) for i, c in zip(overlap_ids, overlap_counts) if i != 0 and int(i) not in same_group]
    if invaded:
        relation, touching = "invading", invaded
    else:
        ring = ndimage.binary_dilation(lesion_crop, structure=np.ones((3, 3, 3), bool)) & ~lesion_crop
        ring_ids, ring_counts = np.unique(organs_crop[ring], return_counts=True)
        touching = [(int(c), int(i)) for i, c in zip(ring_ids, ring_counts) if i != 0 and int(i) not in same_group]
        relation = "abutting" if touching else "clear"
    adjacent = [readable_organ(label_names.get(i, f"label_{i}")) for _, i in sorted(touching, reverse=True)]

    # Sub-location: the centroid's position in the host organ's own RAS bounding box.
    centroid_world = affine[:3, :3] @ centroid_vox + affine[:3, 3]
    location = readable_organ(host_name)
    if host is not None:
        # The lobe / side / level comes from the host label, the relative position from its extent.
        extent = stats.world_extent(host)
        if extent is not None:
            wmin, wmax = extent
            # Relative position: 0 = patient's right (+x end), posterior (-y), inferior (-z).
            rel = np.array(
                [
                    1.0 - _fraction(centroid_world[0], wmin[0], wmax[0]),
                    _fraction(centroid_world[1], wmin[1], wmax[1]),
                    _fraction(centroid_world[2], wmin[2], wmax[2]),
                ]
            )
            location = _sub_location(host_name, rel)

    return LesionMeasurement(
        organ=host_group,
        organ_label=host_name,
        location=location,
        size_mm=lesion_diameters_mm(voxels, affine),
        volume_ml=round(float(len(voxels) * np.prod(spacing) / 1000.0), 3),
        mean_hu=round(mean_hu, 1),
        organ_mean_hu=None if organ_mean is None else round(organ_mean, 1),
        density=density,
        relation_to_adjacent=relation,
        adjacent_organs=adjacent,
        centroid_ras_mm=[round(float(v), 1) for v in centroid_world],
    )


def render_impression(lesions: Sequence[LesionReport]) -> str:
    """The canonical one-paragraph impression for a report's lesions (also used for predictions)."""
    if not lesions:
        return "No focal lesion identified."
    parts = []
    for lesion in lesions:
        info = LESION_TYPES[lesion.type]
        verdict = "suspicious for malignancy" if info.malignant else "consistent with a benign lesion"
        parts.append(
            f"{lesion.size_mm[0]:.0f} mm {lesion.density} {lesion.density_variation} lesion in the "
            f"{lesion.location} ({info.readable}), {verdict}."
        )
    count = len(lesions)
    head = "One lesion:" if count == 1 else f"{count} lesions:"
    return " ".join([head, *parts])
