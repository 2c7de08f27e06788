"""Learned lesion synthesis (FreeTumor-style): a refiner, its segmentation discriminator, quality control.

PASTA-Gen draws a lesion with formulas (:mod:`datasets_pasta.lesions`). This stage learns what
the formulas cannot: a small 3D U-Net, :class:`modeling_pasta.PastaForLesionSynthesis`, adds a
bounded residual (HU) inside the lesion's blending weight, conditioned on the lesion type. It is
trained against a *segmentation* discriminator (background / host organ / lesion,
:class:`modeling_pasta.PastaForSegmentation` with the classes of :data:`SYNTHESIS_CLASSES`),
as in FreeTumor (PASTA_SPEC.md, section 3):

- the discriminator learns to segment *real* lesions (segmentation term, weight 1) and to call
  the refined lesions' voxels "organ", i.e. not a real lesion (adversarial term, weight ~0.1);
- the refiner wins when the discriminator segments its lesions as lesions.

"Real" lesions come from a labeled tumor set when the user has one
(:func:`labeled_lesion_crops`). Without one, the procedural lesions of a PASTA-Gen corpus stand
in for the real side (:func:`corpus_lesion_crops` on a disjoint part of the corpus): the refiner
then learns to make lesions the discriminator segments confidently, not to imitate real
tumors. ``training/train_refiner.py`` says which side it used in its log and results.

Quality control (:class:`LesionQualityControl`) keeps a synthetic lesion only when a trained
segmenter (the shipped ``checkpoints/pasta-small`` or a user's) labels at least ``threshold``
(default 70 %) of its voxels as lesion. :func:`datasets_pasta.sample.generate_sample` regenerates
rejected lesions and records every attempt; ``pasta generate --refiner DIR --quality-control``
wires both in, and the report is still measured from the final voxels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from modeling_pasta.organs import TOTALSEGMENTATOR_TOTAL
from modeling_pasta.report import LESION_TYPES, voxel_spacing

from .bases import BaseError, organ_label_ids
from .lesions import DEFAULT_EDGE_MM, blend_weight, edge_width_mm

logger = logging.getLogger(__name__)

#: Classes of the segmentation discriminator.
SYNTHESIS_CLASSES = {0: "background", 1: "organ", 2: "lesion"}
ORGAN_CLASS, LESION_CLASS = 1, 2
#: Default share of a lesion's voxels the QC segmenter must label as lesion.
DEFAULT_QC_THRESHOLD = 0.7
#: Default attempts per lesion before quality control gives up on a sample.
DEFAULT_QC_ATTEMPTS = 8


class QualityControlError(BaseError):
    """No attempt at a lesion passed quality control (the sample is then redrawn with another seed).

    ``records`` holds the synthesis records of the abandoned sample, so rejection rates count them.
    """

    def __init__(self, message: str, records: list[dict] | None = None):
        super().__init__(message)
        self.records = list(records or [])


# --------------------------------------------------------------------------------------------
# Masks, windows, crops
# --------------------------------------------------------------------------------------------


def host_organ_mask(organ_map: np.ndarray, lesion_type: str, label_names: dict[int, str] | None = None) -> np.ndarray:
    """Voxels of the organ (group) that hosts ``lesion_type`` (e.g. both kidneys for a kidney cyst)."""
    ids = organ_label_ids(LESION_TYPES[lesion_type].organ, label_names or TOTALSEGMENTATOR_TOTAL)
    return np.isin(organ_map, ids)


def lesion_window(
    region: np.ndarray, shape: Sequence[int], divisor: int, margin_vox: int = 4, min_size: Sequence[int] | None = None
) -> tuple[tuple[slice, ...], list[tuple[int, int]]]:
    """A box around ``region`` (bool) inside a volume of ``shape`` and the padding making it divisible.

    The box spans the region plus ``margin_vox`` (at least ``min_size``), is rounded up to a
    multiple of ``divisor`` and shifted to stay inside the volume; where the volume is smaller
    than that, the box is the whole axis and ``pad`` (before, after) makes up the difference.
    """
    voxels = np.argwhere(region)
    lo, hi = voxels.min(axis=0) - margin_vox, voxels.max(axis=0) + 1 + margin_vox
    box, pad = [], []
    for axis, n in enumerate(shape):
        want = int(hi[axis] - lo[axis])
        if min_size is not None:
            want = max(want, int(min_size[axis]))
        want = -(-want // divisor) * divisor
        if want <= n:
            start = int(np.clip((lo[axis] + hi[axis] - want) // 2, 0, n - want))
            box.append(slice(start, start + want))
            pad.append((0, 0))
        else:
            box.append(slice(0, n))
            extra = -(-n // divisor) * divisor - n
            pad.append((extra // 2, extra - extra // 2))
    return tuple(box), pad


@dataclass
class LesionCrop:
    """One lesion in a crop, as the refiner and the discriminator see it.

    Attributes:
        ct_hu: CT crop (HU, float32).
        host_mask: the host organ (bool).
        lesion_mask: the lesion (bool).
        lesion_type: key of ``LESION_TYPES`` (``"none"`` for a labeled lesion of unknown type).
        spacing_mm: voxel size (mm).
        source: case id (and lesion id) it came from.
    """

    ct_hu: np.ndarray
    host_mask: np.ndarray
    lesion_mask: np.ndarray
    lesion_type: str
    spacing_mm: tuple[float, float, float]
    source: str

    @cached_property
    def labels(self) -> np.ndarray:
        """Discriminator targets: 0 background, 1 host organ, 2 lesion (uint8); computed once."""
        labels = np.where(self.host_mask, ORGAN_CLASS, 0).astype(np.uint8)
        labels[self.lesion_mask] = LESION_CLASS
        return labels

    @cached_property
    def blend_weight(self) -> np.ndarray:
        """The lesion's blending weight (the refiner's residual is confined to it); computed once."""
        return blend_weight(self.lesion_mask, self.spacing_mm, edge_width_mm(self.spacing_mm))


def _crop(array: np.ndarray, center: Sequence[float], size: Sequence[int], fill: float = 0) -> np.ndarray:
    from modeling_pasta.image_processing_pasta import crop_or_pad

    if fill:
        return crop_or_pad(array.astype(np.float32) - fill, center, size) + fill
    return crop_or_pad(array, center, size)


def crop_lesion(
    ct_hu: np.ndarray,
    host_mask: np.ndarray,
    lesion_mask: np.ndarray,
    lesion_type: str,
    spacing_mm: Sequence[float],
    size: Sequence[int],
    source: str,
    rng: np.random.Generator | None = None,
    jitter_vox: int = 0,
) -> LesionCrop:
    """A ``size`` crop centred on the lesion's centre of mass (plus a random shift), air outside the scan."""
    center = np.argwhere(lesion_mask).mean(axis=0)
    if rng is not None and jitter_vox:
        center = center + rng.integers(-jitter_vox, jitter_vox + 1, size=3)
    return LesionCrop(
        ct_hu=_crop(ct_hu, center, size, fill=-1024.0).astype(np.float32),
        host_mask=_crop(host_mask, center, size),
        lesion_mask=_crop(lesion_mask, center, size),
        lesion_type=lesion_type,
        spacing_mm=tuple(float(s) for s in spacing_mm),
        source=source,
    )


def corpus_lesion_crops(
    sample: Any, size: Sequence[int], rng: np.random.Generator | None = None, jitter_vox: int = 0
) -> list[LesionCrop]:
    """One crop per lesion of a corpus sample (:class:`datasets_pasta.sample.CorpusSample`)."""
    crops = []
    spacing = voxel_spacing(sample.affine)
    for lesion in sample.report.lesions:
        mask = sample.lesion_mask == lesion.id
        if not mask.any():
            continue
        host = host_organ_mask(sample.organ_map, lesion.type) | mask
        crops.append(
            crop_lesion(
                sample.ct_hu, host, mask, lesion.type, spacing, size, f"{sample.case_id}#{lesion.id}", rng, jitter_vox
            )
        )
    return crops


def labeled_lesion_crops(
    case: Any,
    lesion_labels: Sequence[int],
    organ_labels: Sequence[int],
    spacing_mm: Sequence[float],
    size: Sequence[int],
) -> list[LesionCrop]:
    """Crops of every lesion (connected component) of a user's labeled tumor case.

    ``case`` is a :class:`datasets_pasta.labeled.LabeledCase` with a mask where ``lesion_labels``
    mark tumor and ``organ_labels`` the host organ (e.g. LiTS: organ 1, lesion 2). The image and
    mask are reoriented to RAS+ and resampled to ``spacing_mm`` first, like a corpus scan.
    """
    from scipy import ndimage

    from modeling_pasta.image_io import load_image
    from modeling_pasta.image_processing_pasta import PastaImageProcessor

    if case.mask is None:
        raise BaseError(f"{case.image}: a real-lesion case needs a mask with the lesion labels {list(lesion_labels)}")
    processor = PastaImageProcessor(target_spacing_mm=spacing_mm)
    ct, geometry = processor.to_model_grid(load_image(case.image))
    labels = processor.resample_like(load_image(case.mask), geometry, is_label=True)
    if labels.shape != ct.shape:
        raise BaseError(f"{case.mask}: the mask does not cover the grid of {case.image}")
    lesions = np.isin(labels, list(lesion_labels))
    host = np.isin(labels, list(organ_labels)) | lesions
    components, count = ndimage.label(lesions)
    spacing = tuple(float(s) for s in spacing_mm)
    return [
        crop_lesion(ct, host, components == k, "none", spacing, size, f"{case.case_id}#{k}")
        for k in range(1, count + 1)
    ]


def stack_crops(crops: Sequence[LesionCrop], lesion_types: Sequence[str]) -> dict[str, Any]:
    """A batch of torch tensors: ``ct_hu``, ``host_mask``, ``blend_weight`` ``(B, 1, ...)``,
    ``labels`` ``(B, ...)`` and ``lesion_type_ids`` ``(B,)`` (indices into ``lesion_types``)."""
    import torch

    index = {name: i for i, name in enumerate(lesion_types)}
    return {
        "ct_hu": torch.from_numpy(np.stack([c.ct_hu for c in crops])[:, None]),
        "host_mask": torch.from_numpy(np.stack([c.host_mask for c in crops])[:, None].astype(np.float32)),
        "blend_weight": torch.from_numpy(np.stack([c.blend_weight for c in crops])[:, None]),
        "labels": torch.from_numpy(np.stack([c.labels for c in crops]).astype(np.int64)),
        "lesion_type_ids": torch.tensor([index.get(c.lesion_type, 0) for c in crops], dtype=torch.long),
    }


# --------------------------------------------------------------------------------------------
# The discriminator
# --------------------------------------------------------------------------------------------


def discriminator_config(refiner_config: Any, hidden_sizes: Sequence[int] | None = None) -> Any:
    """The segmentation discriminator's config: the refiner's architecture and intensity curve,
    one CT channel, classes background / organ / lesion."""
    from modeling_pasta.configuration_pasta import PastaConfig

    sizes = list(hidden_sizes or refiner_config.hidden_sizes)
    return PastaConfig(
        in_channels=1,
        hidden_sizes=sizes,
        depths=[2] * len(sizes),
        decoder_depths=[2] * (len(sizes) - 1),
        patch_size=list(refiner_config.patch_size),
        target_spacing_mm=list(refiner_config.target_spacing_mm),
        intensity_scheme="pasta_hu",
        hu_breakpoints=list(refiner_config.hu_breakpoints),
        hu_targets=list(refiner_config.hu_targets),
        id2label=dict(SYNTHESIS_CLASSES),
        segmentation_organs={"organ": []},
        lesion_label="lesion",
        dice_loss_weight=1.0,
    )


def discriminator_inputs(ct_hu: Any, config: Any) -> Any:
    """The discriminator's ``pixel_values``: CT (HU, torch) through the config's ``pasta_hu`` curve."""
    from modeling_pasta.modeling_pasta import piecewise_linear_hu

    return piecewise_linear_hu(ct_hu, config.hu_breakpoints, config.hu_targets)


# --------------------------------------------------------------------------------------------
# Using a trained refiner and a QC segmenter during generation
# --------------------------------------------------------------------------------------------


class LesionRefiner:
    """A trained :class:`~modeling_pasta.PastaForLesionSynthesis` applied to lesions drawn into a scan.

    Args:
        model: the refiner (put in eval mode here).
        device: where it runs.
    """

    def __init__(self, model: Any, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.device = device
        self.divisor = 2 ** (model.config.num_stages - 1)
        self._warned_spacing: set[tuple[float, ...]] = set()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> "LesionRefiner":
        """Load a refiner folder written by ``training/train_refiner.py`` (safetensors)."""
        from modeling_pasta.modeling_pasta import PastaForLesionSynthesis

        return cls(PastaForLesionSynthesis.from_pretrained(cls.checkpoint_path(path)), device)

    @staticmethod
    def checkpoint_path(path: str | Path) -> Path:
        """``path`` when it holds a refiner checkpoint, else FileNotFoundError saying so."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path}: no refiner checkpoint there (config.json missing); train one with training/train_refiner.py"
            )
        return path

    def refine(
        self,
        ct_hu: np.ndarray,
        lesion_mask: np.ndarray,
        host_mask: np.ndarray,
        lesion_type: str,
        spacing_mm: Sequence[float],
        *,
        edge_mm: float = DEFAULT_EDGE_MM,
        protected: np.ndarray | None = None,
    ) -> np.ndarray:
        """Add the refiner's residual to ``ct_hu`` (float HU, in place) around one lesion.

        The residual is confined to the lesion's blending weight (:func:`~datasets_pasta.lesions.blend_weight`
        with ``edge_mm``) minus ``protected`` voxels (other lesions). Returns the residual (HU) on
        the full grid (zero outside the weight).
        """
        import torch

        spacing = tuple(float(s) for s in spacing_mm)
        trained = tuple(float(s) for s in self.model.config.target_spacing_mm)
        if not np.allclose(spacing, trained, rtol=0.15) and spacing not in self._warned_spacing:
            self._warned_spacing.add(spacing)
            logger.warning("the refiner was trained at %s mm; refining lesions on a %s mm grid", trained, spacing)
        edge = edge_width_mm(spacing, edge_mm)
        margin = int(np.ceil(edge / min(spacing))) + 4
        box, pad = lesion_window(lesion_mask, ct_hu.shape, self.divisor, margin)
        weight = blend_weight(lesion_mask[box], spacing, edge)
        if protected is not None:
            weight[protected[box] & ~lesion_mask[box]] = 0.0
        arrays = [ct_hu[box].astype(np.float32), host_mask[box].astype(np.float32), weight]
        padded = [np.pad(a, pad, mode="edge" if i == 0 else "constant") for i, a in enumerate(arrays)]
        types = self.model.lesion_types
        type_id = types.index(lesion_type) if lesion_type in types else 0
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(a))[None, None].to(self.device) for a in padded]
            out = self.model(*tensors, lesion_type_ids=torch.tensor([type_id], device=self.device))
        residual = out.residual_hu[0, 0].float().cpu().numpy()
        residual = residual[tuple(slice(b, residual.shape[i] - a) for i, (b, a) in enumerate(pad))]
        ct_hu[box] += residual
        full = np.zeros(ct_hu.shape, dtype=np.float32)
        full[box] = residual
        return full


class LesionQualityControl:
    """FreeTumor's quality filter: keep a synthetic lesion only if a trained segmenter finds it.

    Args:
        model: a :class:`~modeling_pasta.PastaForSegmentation` with a lesion class.
        processor: its :class:`~modeling_pasta.PastaImageProcessor`.
        threshold: least share of the lesion's voxels the segmenter must label as lesion.
        max_attempts: lesions drawn (and refined) per requested lesion before giving up.
    """

    def __init__(self, model: Any, processor: Any, threshold: float = DEFAULT_QC_THRESHOLD,
                 max_attempts: int = DEFAULT_QC_ATTEMPTS, device: str = "cpu"):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"the QC threshold is a share of the lesion's voxels in (0, 1], got {threshold}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.model = model.eval().to(device)
        self.lesion_id = model.config.lesion_label_id
        self.processor = processor
        self.threshold = float(threshold)
        self.max_attempts = int(max_attempts)
        self.divisor = processor.size_divisor

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **kwargs: Any) -> "LesionQualityControl":
        """A segmentation checkpoint, or a pipeline folder with ``segmentation/`` (default: the shipped model)."""
        from modeling_pasta.image_processing_pasta import PastaImageProcessor
        from modeling_pasta.modeling_pasta import PastaForSegmentation

        path = cls.checkpoint_path(path)
        model = PastaForSegmentation.from_pretrained(path)
        if model.config.lesion_label is None:
            raise ValueError(f"{path}: this segmenter has no lesion class; quality control needs one")
        processor = PastaImageProcessor.from_model_config(model.config)
        return cls(model, processor, **kwargs)

    @staticmethod
    def checkpoint_path(path: str | Path | None) -> Path:
        """The segmentation checkpoint folder for ``path`` (a pipeline folder's ``segmentation/``;
        None = the shipped model), else FileNotFoundError saying so."""
        if path is None:
            from .predict import SHIPPED_MODEL

            path = SHIPPED_MODEL
        path = Path(path)
        if (path / "segmentation" / "config.json").is_file():
            path = path / "segmentation"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no segmentation checkpoint there (config.json missing) for quality control")
        return path

    def detected_fraction(self, ct_hu: np.ndarray, affine: np.ndarray, lesion_mask: np.ndarray) -> float:
        """Share of ``lesion_mask``'s voxels the segmenter labels as lesion, on its own grid.

        The whole scan is normalised as at inference (so intensity statistics are the scan's), then
        only a window around the lesion (at least one patch) is segmented by sliding windows.
        """
        import torch

        from modeling_pasta.image_processing_pasta import crop_or_pad

        features = self.processor.preprocess((np.asarray(ct_hu, dtype=np.float32), affine))
        pixel_values, geometry = features["pixel_values"], features["geometry"][0]
        mask = self.processor.resample_like((lesion_mask.astype(np.uint8), affine), geometry, is_label=True) > 0
        if not mask.any():  # smaller than a voxel of the segmenter's grid: judge its centre voxel
            center = np.round(np.argwhere(lesion_mask).mean(axis=0)).astype(int)
            world = affine @ np.append(center, 1.0)
            voxel = np.round(np.linalg.solve(geometry.model_affine, world)[:3]).astype(int)
            voxel = np.clip(voxel, 0, np.array(mask.shape) - 1)
            mask[tuple(voxel)] = True
        box, _ = lesion_window(mask, mask.shape, self.divisor, margin_vox=8, min_size=self.processor.patch_size)
        center = [(s.start + s.stop) / 2 for s in box]
        size = [-(-(s.stop - s.start) // self.divisor) * self.divisor for s in box]
        size = [max(n, p) for n, p in zip(size, self.processor.patch_size)]
        window = crop_or_pad(pixel_values, center, size)
        window_mask = crop_or_pad(torch.from_numpy(mask), center, size).numpy()
        labels = self.processor.predict_segmentation(self.model, window)[0].cpu().numpy()
        return float((labels[window_mask] == self.lesion_id).mean())


@dataclass
class LesionSynthesis:
    """The learned stage for :func:`datasets_pasta.sample.generate_sample`: a refiner and/or QC."""

    refiner: LesionRefiner | None = None
    quality_control: LesionQualityControl | None = None

    @property
    def attempts(self) -> int:
        return self.quality_control.max_attempts if self.quality_control is not None else 1


@dataclass
class QualityControlSummary:
    """Counts over the lesions of a run (what ``pasta generate`` reports): lesions kept, attempts
    checked, attempts rejected, including those of samples abandoned and redrawn."""

    lesions: int = 0
    attempts: int = 0
    rejected: int = 0
    fractions: list[float] = field(default_factory=list)

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self.lesions += int(record.get("kept", True))
            self.attempts += len(record["detected_fractions"]) or 1
            self.rejected += sum(not ok for ok in record["passed"])
            self.fractions.extend(record["detected_fractions"])

    def to_dict(self) -> dict[str, Any]:
        checked = len(self.fractions)
        return {
            "lesions": self.lesions,
            "attempts": self.attempts,
            "rejected": self.rejected,
            "pass_rate": round((checked - self.rejected) / checked, 4) if checked else None,
            "mean_detected_fraction": round(float(np.mean(self.fractions)), 4) if checked else None,
        }


__all__ = [
    "DEFAULT_QC_ATTEMPTS",
    "DEFAULT_QC_THRESHOLD",
    "SYNTHESIS_CLASSES",
    "LesionCrop",
    "LesionQualityControl",
    "LesionRefiner",
    "LesionSynthesis",
    "QualityControlError",
    "QualityControlSummary",
    "corpus_lesion_crops",
    "crop_lesion",
    "discriminator_config",
    "discriminator_inputs",
    "host_organ_mask",
    "labeled_lesion_crops",
    "lesion_window",
    "stack_crops",
]
