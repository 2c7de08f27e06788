"""Training examples from corpus scans: the model grid, patch sampling, targets and labels.

Each PASTA training stage sees a corpus scan differently:

- ``mim`` (masked image modelling) and ``segmentation``: random patches of ``patch_size``
  voxels, nnU-Net style: a share of them centred on a lesion voxel (``lesion_fraction``), a
  share on an organ voxel, the rest anywhere, with organ + lesion class targets
  (:func:`modeling_pasta.image_processing_pasta.segmentation_targets`).
- ``classification``: one patch per lesion, centred on it (with jitter), its mask as
  ``lesion_mask`` and labels for every task of the config (type, malignancy, report
  attributes; the scan's phase; detection = a lesion in the patch). Lesion-free patches teach
  ``lesion_type="none"``: their ``lesion_mask`` is a small sphere in an organ, the kind of region a
  false-positive segmentation would hand the classifier.
- ``report``: the whole scan at the report model's (coarse) spacing, cropped to its
  ``patch_size`` around the centre, with the report text as token ids.

:class:`CorpusPatchStream` turns a (streaming) corpus split into a shuffled stream of such
examples for a ``DataLoader``; :func:`collate_examples` batches them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch

from modeling_pasta.image_io import Volume
from modeling_pasta.image_processing_pasta import PastaImageProcessor, crop_or_pad, segmentation_targets
from modeling_pasta.organs import TOTALSEGMENTATOR_TOTAL
from modeling_pasta.report import voxel_spacing

from .corpus import decode_sample
from .sample import CorpusSample

logger = logging.getLogger(__name__)

#: Training stages and the model each one trains.
STAGES = ("mim", "segmentation", "classification", "report")
IGNORE_INDEX = -100
#: Radius (mm) of the organ sphere that stands in for a lesion mask in lesion-free patches.
NEGATIVE_REGION_RADIUS_MM = 8.0


@dataclass
class ModelGridScan:
    """A corpus scan on a model's grid (RAS+, the processor's spacing).

    Attributes:
        pixel_values: ``(channels, x, y, z)`` float32, normalised as the processor does it.
        organ_map: organ ids (TotalSegmentator "total"), uint8.
        lesion_mask: 0 background, k = report lesion k, uint8.
        affine: voxel -> RAS+ mm of the grid.
        sample: the decoded corpus sample (report, phase, text).
    """

    pixel_values: np.ndarray
    organ_map: np.ndarray
    lesion_mask: np.ndarray
    affine: np.ndarray
    sample: CorpusSample

    @property
    def spacing_mm(self) -> np.ndarray:
        return voxel_spacing(self.affine)


class LabeledGrid(Protocol):
    """What patch sampling reads: label maps on the model grid (lesion ids, organ or class ids)."""

    lesion_mask: np.ndarray
    organ_map: np.ndarray


def to_model_grid(sample: CorpusSample, processor: PastaImageProcessor, *, with_labels: bool = True) -> ModelGridScan:
    """Reorient and resample a corpus sample to the processor's grid and normalise its intensities.

    A corpus generated at the model's spacing needs no resampling (only a reorientation when
    its voxel order is not RAS+). ``with_labels=False`` skips the label maps (left empty), for
    stages that do not use them (reports).
    """
    volume = Volume(sample.ct_hu, sample.affine, sample.case_id)
    hu, geometry = processor.to_model_grid(volume)
    channels = [processor.normalize_ct(hu)]
    if processor.in_channels == 2:
        if sample.pet_suv is None:
            raise ValueError(f"{sample.case_id}: the model expects CT + PET but this scan has no PET channel")
        pet, _ = processor.to_model_grid(Volume(sample.pet_suv, sample.affine, sample.case_id))
        channels.append(processor.zscore(pet))
    if with_labels:
        organ_map, _ = processor.to_model_grid(Volume(sample.organ_map, sample.affine, sample.case_id), is_label=True)
        lesions, _ = processor.to_model_grid(Volume(sample.lesion_mask, sample.affine, sample.case_id), is_label=True)
    else:
        organ_map = lesions = np.zeros(hu.shape, dtype=np.uint8)
    return ModelGridScan(
        pixel_values=np.stack(channels).astype(np.float32, copy=False),
        organ_map=np.asarray(organ_map, dtype=np.uint8),
        lesion_mask=np.asarray(lesions, dtype=np.uint8),
        affine=geometry.model_affine,
        sample=sample,
    )


def random_voxel(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A uniformly drawn voxel index where ``mask`` is true, or None for an empty mask."""
    coords = np.flatnonzero(mask)
    if coords.size == 0:
        return None
    return np.array(np.unravel_index(int(coords[rng.integers(coords.size)]), mask.shape), dtype=float)


def patch_center(
    scan: LabeledGrid, patch_size: Sequence[int], rng: np.random.Generator, *, lesion_fraction: float
) -> np.ndarray:
    """nnU-Net style: a lesion voxel with probability ``lesion_fraction`` (when the scan has one),
    else an organ voxel half of the remaining times, else anywhere a patch fits."""
    draw = rng.random()
    if draw < lesion_fraction:
        center = random_voxel(scan.lesion_mask > 0, rng)
        if center is not None:
            return center
    if draw < lesion_fraction + (1 - lesion_fraction) / 2:
        center = random_voxel(scan.organ_map > 0, rng)
        if center is not None:
            return center
    shape = np.array(scan.organ_map.shape, dtype=float)
    half = np.minimum(np.asarray(patch_size, dtype=float) / 2, shape / 2)
    return rng.uniform(half, np.maximum(shape - half, half))


# --------------------------------------------------------------------------------------------
# Examples per stage
# --------------------------------------------------------------------------------------------


def segmentation_examples(
    scan: ModelGridScan,
    config: Any,
    rng: np.random.Generator,
    *,
    num_patches: int,
    lesion_fraction: float = 0.5,
    label_names: Mapping[int, str] = TOTALSEGMENTATOR_TOTAL,
) -> list[dict[str, Any]]:
    """``num_patches`` patches with organ + lesion class targets (``pixel_values``, ``labels``)."""
    targets = segmentation_targets(scan.organ_map, scan.lesion_mask, config, label_names)
    size = list(config.patch_size)
    examples = []
    for _ in range(num_patches):
        center = patch_center(scan, size, rng, lesion_fraction=lesion_fraction)
        examples.append(
            {
                "pixel_values": crop_or_pad(scan.pixel_values, center, size),
                "labels": crop_or_pad(targets, center, size).astype(np.int64),
            }
        )
    return examples


def mim_examples(
    scan: ModelGridScan, config: Any, rng: np.random.Generator, *, num_patches: int, lesion_fraction: float = 0.2
) -> list[dict[str, Any]]:
    """``num_patches`` image patches for masked image modelling (the model draws its own masks)."""
    size = list(config.patch_size)
    return [
        {"pixel_values": crop_or_pad(scan.pixel_values, patch_center(scan, size, rng, lesion_fraction=lesion_fraction), size)}
        for _ in range(num_patches)
    ]


def _class_index(config: Any, task: str, value: str | None) -> int:
    classes = config.classification_tasks.get(task)
    if classes is None or value is None or value not in classes:
        return IGNORE_INDEX
    return classes.index(value)


def lesion_labels(config: Any, lesion: Any | None, phase: str, present: bool) -> dict[str, int]:
    """Class ids of every classification task for one patch (``-100`` where there is no label).

    Args:
        lesion: the :class:`~modeling_pasta.report.LesionReport` of the patch's lesion, or None
            for a lesion-free patch (``lesion_type`` = "none" when the task has that class).
        phase: the scan's contrast phase.
        present: whether the patch holds lesion voxels (the ``detection`` task).
    """
    labels = {task: IGNORE_INDEX for task in config.classification_tasks}
    labels["phase"] = _class_index(config, "phase", phase)
    labels["detection"] = _class_index(config, "detection", "present" if present else "absent")
    if lesion is None:
        labels["lesion_type"] = _class_index(config, "lesion_type", "none")
    else:
        labels["lesion_type"] = _class_index(config, "lesion_type", lesion.type)
        labels["malignancy"] = _class_index(config, "malignancy", "malignant" if lesion.malignant else "benign")
        for task in config.classification_tasks:
            if task not in ("phase", "detection", "lesion_type", "malignancy") and hasattr(lesion, task):
                labels[task] = _class_index(config, task, getattr(lesion, task))
    return {task: value for task, value in labels.items() if task in config.classification_tasks}


def _sphere(shape: Sequence[int], center: np.ndarray, radius_vox: np.ndarray) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radius_vox))
    return distance <= 1.0


def classification_examples(
    scan: ModelGridScan,
    config: Any,
    rng: np.random.Generator,
    *,
    num_negatives: int = 1,
    jitter_fraction: float = 0.25,
) -> list[dict[str, Any]]:
    """One patch per lesion (centred on it, jittered by up to ``jitter_fraction`` of the patch)
    and ``num_negatives`` lesion-free patches centred in an organ.

    Each example holds ``pixel_values``, ``lesion_mask`` ``(1, *patch)`` float32 and ``labels``
    (task -> class id).
    """
    size = np.asarray(config.patch_size)
    report = scan.sample.report
    examples = []
    for lesion in report.lesions:
        voxels = scan.lesion_mask == lesion.id
        if not voxels.any():  # vanished in resampling (a tiny lesion on a coarse grid)
            continue
        centroid = np.argwhere(voxels).mean(axis=0)
        center = centroid + rng.uniform(-jitter_fraction, jitter_fraction, size=3) * size
        examples.append(
            {
                "pixel_values": crop_or_pad(scan.pixel_values, center, size),
                "lesion_mask": crop_or_pad(voxels.astype(np.float32), center, size)[None],
                "labels": lesion_labels(config, lesion, report.phase, present=True),
            }
        )
    radius_vox = NEGATIVE_REGION_RADIUS_MM / scan.spacing_mm
    organs = (scan.organ_map > 0) & (scan.lesion_mask == 0)
    for _ in range(num_negatives):
        center = random_voxel(organs, rng)
        if center is None:
            break
        region = _sphere(scan.organ_map.shape, center, radius_vox) & organs
        lesion_crop = crop_or_pad(scan.lesion_mask, center, size)
        examples.append(
            {
                "pixel_values": crop_or_pad(scan.pixel_values, center, size),
                "lesion_mask": crop_or_pad(region.astype(np.float32), center, size)[None],
                "labels": lesion_labels(config, None, report.phase, present=bool(lesion_crop.any())),
            }
        )
    return examples


def report_example(scan: ModelGridScan, config: Any, tokenizer: Any) -> dict[str, Any]:
    """The scan's central ``patch_size`` crop and its report text as token ids (``labels``, ending in EOS)."""
    center = np.asarray(scan.pixel_values.shape[1:], dtype=float) / 2
    max_length = int(config.text_config.max_position_embeddings)
    ids = tokenizer(scan.sample.report_text, truncation=True, max_length=max_length)["input_ids"]
    return {
        "pixel_values": crop_or_pad(scan.pixel_values, center, config.patch_size),
        "labels": np.asarray(ids, dtype=np.int64),
    }


def examples_for_stage(
    stage: str,
    scan: ModelGridScan,
    config: Any,
    rng: np.random.Generator,
    *,
    patches_per_scan: int = 4,
    lesion_fraction: float = 0.5,
    tokenizer: Any | None = None,
) -> list[dict[str, Any]]:
    """The training examples of ``stage`` (one of :data:`STAGES`) from one scan."""
    if stage == "segmentation":
        return segmentation_examples(scan, config, rng, num_patches=patches_per_scan, lesion_fraction=lesion_fraction)
    if stage == "mim":
        return mim_examples(scan, config, rng, num_patches=patches_per_scan)
    if stage == "classification":
        return classification_examples(scan, config, rng, num_negatives=max(1, patches_per_scan // 4))
    if stage == "report":
        if tokenizer is None:
            raise ValueError("the report stage needs the report tokenizer")
        return [report_example(scan, config, tokenizer)]
    raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")


# --------------------------------------------------------------------------------------------
# Streaming and batching
# --------------------------------------------------------------------------------------------


class CorpusPatchStream(torch.utils.data.IterableDataset):
    """Training examples from a corpus split, streamed and shuffled, epoch after epoch.

    Args:
        rows: a function ``epoch -> iterable of corpus rows`` (e.g. a streaming split reshuffled
            per epoch); rows may be decoded or raw (``load_corpus(..., decode=False)``).
        make_examples: ``(CorpusSample, np.random.Generator) -> list of examples``.
        seed: seeds the per-row generators (row ``i`` of epoch ``e`` always gets the same patches).
        shuffle_buffer: examples held and drawn from at random (mixes patches of several scans).
        epochs: passes over the rows (None = endless, for step-based training).
        start: ``(epoch, rows to skip)`` to resume where a previous run stopped.

    Every example gets ``epoch``, ``row`` (its position in the epoch) and ``case_id``, so a training
    loop can record how far it got and what it read. With ``DataLoader`` workers, worker ``w`` of ``W`` takes rows
    ``w, w + W, ...``.
    """

    def __init__(
        self,
        rows: Callable[[int], Iterable[Mapping[str, Any]]],
        make_examples: Callable[[CorpusSample, np.random.Generator], list[dict[str, Any]]],
        *,
        seed: int = 0,
        shuffle_buffer: int = 16,
        epochs: int | None = None,
        start: tuple[int, int] = (0, 0),
    ):
        super().__init__()
        self.rows = rows
        self.make_examples = make_examples
        self.seed = int(seed)
        self.shuffle_buffer = max(int(shuffle_buffer), 1)
        self.epochs = epochs
        self.start = (int(start[0]), int(start[1]))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        buffer: list[dict[str, Any]] = []
        shuffle_rng = np.random.default_rng([self.seed, worker_id, self.start[0], self.start[1]])
        epoch = self.start[0]
        skip = self.start[1]
        while self.epochs is None or epoch < self.epochs:
            produced = False
            for index, row in enumerate(self.rows(epoch)):
                if index < skip or index % num_workers != worker_id:
                    continue
                sample = row if isinstance(row, CorpusSample) else decode_sample(row)
                examples = self.make_examples(sample, np.random.default_rng([self.seed, epoch, index]))
                for example in examples:
                    produced = True
                    buffer.append({**example, "epoch": epoch, "row": index, "case_id": sample.case_id})
                    if len(buffer) >= self.shuffle_buffer:
                        yield buffer.pop(int(shuffle_rng.integers(len(buffer))))
            skip = 0
            if not produced and not buffer:
                raise ValueError("the corpus split yielded no training examples (empty split or no usable scans)")
            epoch += 1
        while buffer:
            yield buffer.pop(int(shuffle_rng.integers(len(buffer))))


def collate_examples(examples: Sequence[Mapping[str, Any]], pad_token_id: int | None = None) -> dict[str, Any]:
    """Batch examples: arrays are stacked, label dicts become dicts of tensors, integer token ids
    (1D integer ``labels``) are right-padded with ``-100`` (float label vectors such as survival
    ``(time, event)`` are stacked); ``epoch``/``row``/``case_id`` become lists."""
    batch: dict[str, Any] = {}
    for key in examples[0]:
        values = [example[key] for example in examples]
        if key in ("epoch", "row"):
            batch[key] = [int(v) for v in values]
        elif key == "case_id":
            batch[key] = list(values)
        elif isinstance(values[0], Mapping):
            batch[key] = {task: torch.tensor([v[task] for v in values], dtype=torch.long) for task in values[0]}
        elif key == "labels" and np.asarray(values[0]).ndim == 1 and np.asarray(values[0]).dtype.kind in "iu":
            length = max(len(v) for v in values)
            padded = np.full((len(values), length), IGNORE_INDEX, dtype=np.int64)
            for i, ids in enumerate(values):
                padded[i, : len(ids)] = ids
            batch[key] = torch.from_numpy(padded)
        else:
            batch[key] = torch.from_numpy(np.stack([np.asarray(v) for v in values]))
    return batch


def batch_to_device(batch: Mapping[str, Any], device: torch.device, *, drop: Sequence[str] = ()) -> dict[str, Any]:
    """The model inputs of a :func:`collate_examples` batch on ``device``: tensors and dicts of tensors
    are moved, the bookkeeping lists (``epoch``, ``row``, ``case_id``) and the keys in ``drop`` are left out."""
    inputs: dict[str, Any] = {}
    for key, value in batch.items():
        if key in drop:
            continue
        if isinstance(value, Mapping):
            inputs[key] = {task: tensor.to(device) for task, tensor in value.items()}
        elif isinstance(value, torch.Tensor):
            inputs[key] = value.to(device)
    return inputs


__all__ = [
    "STAGES",
    "CorpusPatchStream",
    "LabeledGrid",
    "ModelGridScan",
    "batch_to_device",
    "classification_examples",
    "collate_examples",
    "examples_for_stage",
    "lesion_labels",
    "mim_examples",
    "patch_center",
    "report_example",
    "segmentation_examples",
    "to_model_grid",
]
