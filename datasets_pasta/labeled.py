"""A user's small labeled set for fine-tuning PASTA: cases, model-grid scans, training patches, evaluation.

Two layouts are read:

- a folder of NIfTI images ``<name>.nii.gz``, each with its mask beside it as ``<name>_seg.nii.gz``
  (also ``_organs``, ``_labels``, ``_organ_map``; the pairing of :func:`datasets_pasta.bases.find_base_files`);
  images without a mask are skipped with a log message;
- a CSV with a header: ``image`` (required; a NIfTI file, a DICOM folder or a zip), ``mask``
  (optional), ``label`` (classification), ``time`` and ``event`` (survival, event 1 = observed,
  0 = censored) and ``case_id`` (optional, default the image's file name). Relative paths are
  resolved against the CSV's folder.

:class:`FinetuneDataset` puts every case on the model grid once (image normalised as the
processor does it, mask resampled as labels) and serves random patches with the keys the model's
``forward`` takes, so it plugs into ``transformers.Trainer`` with :func:`datasets_pasta.patches.collate_examples`.
:func:`evaluate_labeled` scores a model on whole cases: segmentation by sliding windows on the
image's own grid (Dice, HD95, surface Dice per class), classification by accuracy and ROC AUC,
survival by the concordance index.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from modeling_pasta.image_io import check_label_map
from modeling_pasta.image_processing_pasta import PastaGeometry, PastaImageProcessor, crop_or_pad, relabel
from modeling_pasta.metrics import accuracy, concordance_index, roc_auc, segmentation_metrics
from modeling_pasta.organs import ORGAN_GROUPS

from .bases import LABEL_SUFFIXES, NIFTI_SUFFIX, BaseError, find_base_files
from .patches import batch_to_device, collate_examples, patch_center

logger = logging.getLogger(__name__)

#: What a labeled set can fine-tune.
TASKS = ("segmentation", "classification", "survival")
#: Columns a labeled-set CSV may have (``image`` is required).
CSV_COLUMNS = ("image", "mask", "label", "time", "event", "case_id")
_TRUE = {"1", "1.0", "true", "yes", "dead", "event"}
_FALSE = {"0", "0.0", "false", "no", "alive", "censored"}


class LabeledDataError(ValueError):
    """A labeled set that cannot be used; the message names the file (and CSV row / column)."""


@dataclass(frozen=True)
class LabeledCase:
    """One labeled case of a user's set.

    Attributes:
        image: the image (NIfTI file, DICOM folder or zip).
        mask: its mask (segmentation targets, or the lesion region of a lesion-level
            classification / survival label), or None.
        label: class name (classification), or None.
        time: follow-up time (survival, any unit), or None.
        event: 1.0 = event observed, 0.0 = censored (survival), or None.
        case_id: a name for messages and per-case results.
        source: where the case was listed (CSV file and row, or the folder), for messages.
    """

    image: Path
    mask: Path | None = None
    label: str | None = None
    time: float | None = None
    event: float | None = None
    case_id: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.case_id:
            object.__setattr__(self, "case_id", NIFTI_SUFFIX.sub("", Path(self.image).name))
        if not self.source:
            object.__setattr__(self, "source", str(self.image))


# --------------------------------------------------------------------------------------------
# Finding cases
# --------------------------------------------------------------------------------------------


def find_labeled_cases(folder: str | Path) -> list[LabeledCase]:
    """The (image, mask) cases of a folder, sorted by name (see the module docstring for the layout).

    Raises:
        LabeledDataError: the folder is missing or holds no image with a mask.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LabeledDataError(f"{folder}: no such folder of labeled images")
    try:
        pairs = find_base_files(folder)
    except BaseError as err:
        suffixes = ", ".join(f"<name>{s}.nii.gz" for s in LABEL_SUFFIXES)
        raise LabeledDataError(
            f"{folder}: no image with a mask found; expected <name>.nii.gz beside its mask ({suffixes})"
        ) from err
    return [LabeledCase(image=image, mask=mask, source=f"{folder} ({image.name})") for image, mask in pairs]


def _csv_path(value: str, csv_path: Path, where: str, column: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = csv_path.parent / path
    if not path.exists():
        raise LabeledDataError(f"{where}, column {column!r}: no such file or folder {path}")
    return path


def _csv_float(value: str, where: str, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise LabeledDataError(f"{where}, column {column!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise LabeledDataError(f"{where}, column {column!r}: {value!r} is not a finite number")
    return number


def _csv_event(value: str, where: str) -> float:
    text = value.strip().lower()
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise LabeledDataError(f"{where}, column 'event': {value!r} is not 1 (event observed) or 0 (censored)")


def read_labeled_csv(path: str | Path) -> list[LabeledCase]:
    """The cases of a labeled-set CSV (see the module docstring for its columns).

    Raises:
        LabeledDataError: naming the file, row and column: missing file or ``image`` column,
            a path that does not exist, a time that is not a non-negative number, an event that
            is not 0/1, a time without an event (or the reverse), duplicate case ids, no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise LabeledDataError(f"{path}: no such CSV file")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "image" not in columns:
            raise LabeledDataError(
                f"{path}: no 'image' column (columns found: {columns}); expected {list(CSV_COLUMNS)}"
            )
        if ("time" in columns) != ("event" in columns):
            raise LabeledDataError(f"{path}: survival needs both a 'time' and an 'event' column, found {columns}")
        ignored = sorted(set(columns) - set(CSV_COLUMNS))
        if ignored:
            logger.info("%s: columns %s are not used", path, ignored)
        cases: list[LabeledCase] = []
        seen: dict[str, str] = {}
        for row_number, raw in enumerate(reader, start=2):  # row 1 is the header
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            where = f"{path}: row {row_number}"
            if not row.get("image"):
                raise LabeledDataError(f"{where}, column 'image': empty")
            image = _csv_path(row["image"], path, where, "image")
            mask = _csv_path(row["mask"], path, where, "mask") if row.get("mask") else None
            time = _csv_float(row["time"], where, "time") if row.get("time") else None
            event = _csv_event(row["event"], where) if row.get("event") else None
            if (time is None) != (event is None):
                missing, given = ("event", "time") if event is None else ("time", "event")
                raise LabeledDataError(f"{where}, column {missing!r}: empty, but the row has a survival {given}")
            if time is not None and time < 0:
                raise LabeledDataError(f"{where}, column 'time': {time} is negative")
            case = LabeledCase(
                image=image,
                mask=mask,
                label=row.get("label") or None,
                time=time,
                event=event,
                case_id=row.get("case_id") or "",
                source=where,
            )
            if case.case_id in seen:
                raise LabeledDataError(
                    f"{where}, column 'case_id': {case.case_id!r} is already used by {seen[case.case_id]}; "
                    "give each row its own case_id"
                )
            seen[case.case_id] = f"row {row_number}"
            cases.append(case)
    if not cases:
        raise LabeledDataError(f"{path}: no cases (the CSV has a header but no rows)")
    return cases


def load_labeled_cases(source: str | Path) -> list[LabeledCase]:
    """Cases from a folder (:func:`find_labeled_cases`) or a ``.csv`` file (:func:`read_labeled_csv`)."""
    source = Path(source)
    if source.suffix.lower() == ".csv":
        return read_labeled_csv(source)
    return find_labeled_cases(source)


def split_cases(
    cases: Sequence[LabeledCase], val_fraction: float, seed: int = 0
) -> tuple[list[LabeledCase], list[LabeledCase]]:
    """A seeded random (train, validation) split, stratified by class label when the cases have labels.

    A positive fraction keeps at least one case on each side.

    Raises:
        LabeledDataError: a fraction outside [0, 1), or too few cases to split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise LabeledDataError(f"the validation fraction must lie in [0, 1), got {val_fraction}")
    cases = list(cases)
    if val_fraction == 0.0:
        return cases, []
    if len(cases) < 2:
        raise LabeledDataError(
            f"{len(cases)} case(s) cannot be split into training and validation; "
            "pass a separate validation set or a validation fraction of 0"
        )
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for index, case in enumerate(cases):
        groups.setdefault(case.label or "", []).append(index)
    val: list[int] = []
    for label in sorted(groups):
        members = [groups[label][i] for i in rng.permutation(len(groups[label]))]
        val += members[: int(round(val_fraction * len(members)))]
    if not val:
        val = [int(rng.integers(len(cases)))]
    if len(val) == len(cases):
        val = val[1:]
    chosen = set(val)
    return [c for i, c in enumerate(cases) if i not in chosen], [c for i, c in enumerate(cases) if i in chosen]


def class_names_of(cases: Sequence[LabeledCase]) -> list[str]:
    """The sorted distinct class labels of the cases (classification).

    Raises:
        LabeledDataError: fewer than two classes, or cases without a label.
    """
    unlabeled = [c.source for c in cases if c.label is None]
    if unlabeled:
        raise LabeledDataError(
            f"classification needs a 'label' for every case (a CSV 'label' column); missing in {unlabeled[:5]}"
        )
    names = sorted({c.label for c in cases})
    if len(names) < 2:
        raise LabeledDataError(f"classification needs at least 2 classes, the cases have only {names}")
    return names


def organ_segmentation_classes(
    label_names: Mapping[int, str], organs: Sequence[str]
) -> tuple[dict[int, str], dict[int, int]]:
    """Classes of an organ segmentation model and how a label map's ids become them.

    Args:
        label_names: label id -> organ name of the user's label maps.
        organs: the organs to segment, in class order; a name of ``label_names`` or an organ
            group of :data:`modeling_pasta.organs.ORGAN_GROUPS` (``"kidney"`` merges both sides).

    Returns:
        ``(id2label, mask_classes)``: ``{0: "background", 1: organs[0], ...}`` and label id ->
        class id (label ids of other organs are background).

    Raises:
        LabeledDataError: an organ the label names do not have (the message lists the ones they have).
    """
    if not organs:
        raise LabeledDataError("name at least one organ to segment")
    by_name = {name: idx for idx, name in label_names.items()}
    id2label = {0: "background"}
    mask_classes: dict[int, int] = {}
    for class_id, organ in enumerate(organs, start=1):
        if organ in id2label.values():
            raise LabeledDataError(f"organ {organ!r} is listed twice")
        members = [organ] if organ in by_name else [m for m in ORGAN_GROUPS.get(organ, ()) if m in by_name]
        if not members:
            raise LabeledDataError(
                f"organ {organ!r} is not in the label names; they have: {', '.join(sorted(by_name))}"
            )
        id2label[class_id] = organ
        mask_classes.update({by_name[m]: class_id for m in members})
    return id2label, mask_classes


# --------------------------------------------------------------------------------------------
# Cases on the model grid
# --------------------------------------------------------------------------------------------


def mask_to_classes(mask: np.ndarray, mask_classes: Mapping[int, int] | None, foreground_class: int = 1) -> np.ndarray:
    """Model class ids (uint8) from a mask's label ids.

    Args:
        mask: the mask's label ids.
        mask_classes: label id -> class id; ids not listed are background. None: a binary
            mask, every nonzero voxel becomes ``foreground_class``.
        foreground_class: the class of a binary mask's foreground.
    """
    mask = np.asarray(mask)
    if mask_classes is None:
        return np.where(mask > 0, foreground_class, 0).astype(np.uint8)
    return relabel(mask, mask_classes)


@dataclass
class LabeledScan:
    """A labeled case on the model grid.

    Attributes:
        pixel_values: ``(channels, x, y, z)`` float32, normalised as the processor does it.
        targets: segmentation class ids (segmentation), the binary lesion region
            (classification / survival with masks), or None (no mask), uint8.
        lesion_mask / organ_map: the two foreground tiers :func:`datasets_pasta.patches.patch_center`
            draws patch centres from: the lesion class (or, classification / survival, the
            lesion region) and every foreground class; all zero without a mask.
        geometry: how the image went to the model grid (and how predictions go back).
        case: the case.
    """

    pixel_values: np.ndarray
    targets: np.ndarray | None
    lesion_mask: np.ndarray
    organ_map: np.ndarray
    geometry: PastaGeometry
    case: LabeledCase


def load_labeled_scan(
    case: LabeledCase,
    processor: PastaImageProcessor,
    *,
    mask_classes: Mapping[int, int] | None = None,
    foreground_class: int = 1,
    lesion_class: int | None = None,
) -> LabeledScan:
    """Put a case on the processor's grid: the image normalised, the mask resampled as labels and mapped.

    Args:
        mask_classes / foreground_class: see :func:`mask_to_classes`.
        lesion_class: the class whose voxels :func:`~datasets_pasta.patches.patch_center` treats as
            lesions (segmentation); None: every foreground voxel.

    Raises:
        LabeledDataError: a mask that does not overlay its image, or a two-channel processor.
        ImageReadError: an unreadable image or mask.
    """
    if processor.in_channels != 1:
        raise LabeledDataError(
            f"{case.source}: fine-tuning reads one image per case; this model expects CT + PET (in_channels=2)"
        )
    image = processor.load(case.image)
    values, geometry = processor.to_model_grid(image)
    pixel_values = processor.normalize_ct(values)[None]
    if case.mask is None:
        targets = None
        lesion_mask = organ_map = np.zeros(values.shape, dtype=np.uint8)
    else:
        mask = processor.load(case.mask)
        check_label_map(image, mask, error=LabeledDataError, what="mask")
        resampled, _ = processor.to_model_grid(mask, is_label=True)
        targets = organ_map = mask_to_classes(resampled, mask_classes, foreground_class)
        lesion_mask = targets if lesion_class is None else (targets == lesion_class).astype(np.uint8)
    return LabeledScan(
        pixel_values=pixel_values.astype(np.float32, copy=False),
        targets=targets,
        lesion_mask=lesion_mask,
        organ_map=organ_map,
        geometry=geometry,
        case=case,
    )


# --------------------------------------------------------------------------------------------
# The training dataset
# --------------------------------------------------------------------------------------------


class FinetuneDataset(torch.utils.data.Dataset):
    """Random training patches of a labeled set, for ``transformers.Trainer`` (map-style).

    Every case is loaded once onto the model grid. Item ``i`` is a patch of case ``i % len(cases)``,
    drawn by a generator seeded with ``(seed, epoch, i)``: reproducible, different every epoch
    (``Trainer`` calls :meth:`set_epoch`).

    - segmentation: ``pixel_values`` and ``labels`` (class ids ``(x, y, z)``), centred on a
      foreground voxel with probability ``(1 + lesion_fraction) / 2`` (on a lesion-class voxel
      with probability ``lesion_fraction`` when the model has a lesion class), anywhere otherwise;
    - classification: ``pixel_values``, ``labels`` ``{task: class id}`` and, when the cases have
      masks, ``lesion_mask`` ``(1, x, y, z)``; the patch is centred on a random lesion voxel (on
      a random position without masks);
    - survival: as classification, with ``labels`` = ``(time, event)`` float32.

    Args:
        cases: the labeled cases.
        processor: the model's processor (grid, intensities, patch size).
        config: the model's :class:`~modeling_pasta.configuration_pasta.PastaConfig`.
        task: one of :data:`TASKS`.
        mask_classes: segmentation: mask label id -> class id (ids not listed are background);
            None: a binary lesion mask, every nonzero voxel is ``config.lesion_label_id``.
        classification_task: the config's task the labels belong to (default: its only task).
        patches_per_epoch: dataset length (default 16 per case).
        seed: seeds the patch positions.
        lesion_fraction: segmentation foreground oversampling (see above).

    Raises:
        LabeledDataError: no cases, a case without what the task needs (mask, label, time/event),
            a label that is not a class of the task, masks on some cases only, mask mismatches.
    """

    def __init__(
        self,
        cases: Sequence[LabeledCase],
        processor: PastaImageProcessor,
        config: Any,
        task: str,
        *,
        mask_classes: Mapping[int, int] | None = None,
        classification_task: str | None = None,
        patches_per_epoch: int | None = None,
        seed: int = 0,
        lesion_fraction: float = 0.5,
    ):
        super().__init__()
        if task not in TASKS:
            raise LabeledDataError(f"unknown task {task!r}; choose one of {list(TASKS)}")
        cases = list(cases)
        if not cases:
            raise LabeledDataError(f"no cases for {task} (an empty labeled set)")
        self.task = task
        self.config = config
        self.processor = processor
        self.patch_size = [int(p) for p in processor.patch_size]
        self.mask_classes = dict(mask_classes) if mask_classes is not None else None
        self.seed = int(seed)
        self.lesion_fraction = float(lesion_fraction)
        self.epoch = 0
        self.classification_task = self._check_cases(cases, classification_task)
        self.class_names = (
            list(config.classification_tasks[self.classification_task]) if task == "classification" else []
        )
        self.patches_per_epoch = int(patches_per_epoch) if patches_per_epoch else 16 * len(cases)
        #: the class of a binary mask's foreground (segmentation without ``mask_classes``: the lesion)
        self.foreground_class = 1
        lesion = None
        if task == "segmentation":
            if self.mask_classes is None:
                self.foreground_class = config.lesion_label_id
            else:
                self._check_mask_classes()
                if config.lesion_label is not None:
                    lesion = config.lesion_label_id
        self.scans = []
        for number, case in enumerate(cases, start=1):
            logger.info("loading case %d/%d: %s", number, len(cases), case.case_id)
            self.scans.append(
                load_labeled_scan(
                    case,
                    processor,
                    mask_classes=self.mask_classes,
                    foreground_class=self.foreground_class,
                    lesion_class=lesion,
                )
            )
            targets = self.scans[-1].targets
            if targets is not None and not targets.any():
                logger.warning("%s: the mask is empty on the model grid (or has none of the classes)", case.source)

    def _check_cases(self, cases: list[LabeledCase], classification_task: str | None) -> str | None:
        """Check that every case has what the task needs; returns the classification task name."""

        def lacking(what: str, bad: list[LabeledCase]) -> None:
            if bad:
                names = ", ".join(c.source for c in bad[:5]) + (" ..." if len(bad) > 5 else "")
                raise LabeledDataError(f"{self.task} needs {what} for every case; missing in {names}")

        if self.task == "segmentation":
            lacking("a mask", [c for c in cases if c.mask is None])
            return None
        with_mask = sum(c.mask is not None for c in cases)
        if 0 < with_mask < len(cases):
            lacking("a mask (some cases have one, so all need one)", [c for c in cases if c.mask is None])
        if self.task == "survival":
            lacking("a time and an event", [c for c in cases if c.time is None or c.event is None])
            if not any(c.event for c in cases):
                logger.warning("no case has an observed event: the Cox loss has nothing to learn from")
            return None
        tasks = self.config.classification_tasks
        if classification_task is None:
            if len(tasks) != 1:
                raise LabeledDataError(f"the model has tasks {sorted(tasks)}; say which one the labels belong to")
            classification_task = next(iter(tasks))
        if classification_task not in tasks:
            raise LabeledDataError(
                f"the model has no classification task {classification_task!r}; it has {sorted(tasks)}"
            )
        lacking("a label", [c for c in cases if c.label is None])
        classes = tasks[classification_task]
        for case in cases:
            if case.label not in classes:
                raise LabeledDataError(
                    f"{case.source}, column 'label': unknown class {case.label!r}; "
                    f"task {classification_task!r} has classes {list(classes)}"
                )
        return classification_task

    def _check_mask_classes(self) -> None:
        known = set(range(1, self.config.num_labels))
        bad = sorted({int(c) for c in self.mask_classes.values()} - known - {0})
        if bad:
            raise LabeledDataError(
                f"mask_classes maps to class ids {bad} the model does not have (classes {self.config.id2label})"
            )

    @property
    def has_lesion_masks(self) -> bool:
        """Whether classification / survival examples carry a ``lesion_mask``."""
        return self.task != "segmentation" and self.scans[0].targets is not None

    def __len__(self) -> int:
        return self.patches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw other patches in the next epoch (``Trainer`` calls this before each epoch)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"patch {index} of a dataset of {len(self)} patches")
        scan = self.scans[index % len(self.scans)]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.task == "segmentation":
            center = patch_center(scan, self.patch_size, rng, lesion_fraction=self.lesion_fraction)
            return {
                "pixel_values": crop_or_pad(scan.pixel_values, center, self.patch_size),
                "labels": crop_or_pad(scan.targets, center, self.patch_size).astype(np.int64),
            }
        # classification / survival: a random lesion voxel (lesion_mask is all zero without masks: anywhere)
        return self._scan_example(scan, patch_center(scan, self.patch_size, rng, lesion_fraction=1.0))

    def evaluation_example(self, index: int) -> dict[str, Any]:
        """Classification / survival: the patch of case ``index`` centred on its lesion's centroid
        (on the volume's centre without masks)."""
        scan = self.scans[index]
        if self.has_lesion_masks and scan.targets.any():
            center = np.argwhere(scan.targets > 0).mean(axis=0)
        else:
            center = np.asarray(scan.pixel_values.shape[1:], dtype=float) / 2
        return self._scan_example(scan, center)

    def _scan_example(self, scan: LabeledScan, center: np.ndarray) -> dict[str, Any]:
        example: dict[str, Any] = {"pixel_values": crop_or_pad(scan.pixel_values, center, self.patch_size)}
        if self.has_lesion_masks:
            example["lesion_mask"] = crop_or_pad(scan.targets.astype(np.float32), center, self.patch_size)[None]
        case = scan.case
        if self.task == "survival":
            example["labels"] = np.array([case.time, case.event], dtype=np.float32)
        else:
            example["labels"] = {self.classification_task: self.class_names.index(case.label)}
        return example


# --------------------------------------------------------------------------------------------
# Evaluation on whole cases
# --------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate_segmentation(model: torch.nn.Module, dataset: FinetuneDataset) -> dict[str, Any]:
    """Dice, HD95 and surface Dice per class of every case, predicted by sliding windows on the whole
    scan and scored on the image's own grid against its mask (mapped to the model's classes).

    Returns:
        ``{"cases": {case_id: {class: metrics}}, "mean_dice": {class: mean over cases}, "dice": mean
        over classes}`` (a class absent from both prediction and mask of a case is not scored there).
    """
    processor = dataset.processor
    class_names = {i: n for i, n in model.config.id2label.items() if i != 0}
    per_case: dict[str, dict[str, dict[str, float]]] = {}
    for scan in dataset.scans:
        pixel_values = torch.from_numpy(scan.pixel_values[None])
        predicted = processor.predict_segmentation(model, pixel_values)[0]
        prediction = processor.postprocess_segmentation(predicted, scan.geometry)
        mask = processor.load(scan.case.mask)
        reference = mask_to_classes(mask.array, dataset.mask_classes, dataset.foreground_class)
        per_case[scan.case.case_id] = segmentation_metrics(prediction, reference, mask.spacing_mm, class_names)
        logger.info(
            "%s: Dice %s",
            scan.case.case_id,
            ", ".join(f"{c} {m['dice']:.3f}" for c, m in per_case[scan.case.case_id].items()) or "no classes present",
        )
    mean_dice = {
        name: _mean([scores[name]["dice"] for scores in per_case.values() if name in scores])
        for name in class_names.values()
    }
    return {"cases": per_case, "mean_dice": mean_dice, "dice": _mean(list(mean_dice.values()))}


@torch.inference_mode()
def _scan_outputs(model: torch.nn.Module, dataset: FinetuneDataset) -> list[Any]:
    device = next(model.parameters()).device
    outputs = []
    for index in range(len(dataset.scans)):
        batch = collate_examples([dataset.evaluation_example(index)])
        outputs.append(model(**batch_to_device(batch, device, drop=("labels",)), return_dict=True))
    return outputs


def evaluate_classification(model: torch.nn.Module, dataset: FinetuneDataset) -> dict[str, Any]:
    """Accuracy and ROC AUC (binary; one-vs-rest averaged over classes for more) of the case patches.

    Returns:
        ``{"accuracy", "roc_auc", "cases": {case_id: {"label", "predicted", "probabilities"}}}``;
        the AUC is ``nan`` when the cases hold a single class.
    """
    task = dataset.classification_task
    probabilities = np.stack(
        [out.logits[task].float().softmax(dim=-1)[0].cpu().numpy() for out in _scan_outputs(model, dataset)]
    )
    references = np.array([dataset.class_names.index(s.case.label) for s in dataset.scans])
    predicted = probabilities.argmax(axis=1)
    if len(dataset.class_names) == 2:
        auc = roc_auc(references == 1, probabilities[:, 1]) if len(set(references)) == 2 else float("nan")
    else:
        auc = _mean(
            [
                roc_auc(references == k, probabilities[:, k])
                for k in range(len(dataset.class_names))
                if 0 < (references == k).sum() < len(references)
            ]
        )
    cases = {
        scan.case.case_id: {
            "label": scan.case.label,
            "predicted": dataset.class_names[int(p)],
            "probabilities": {n: float(v) for n, v in zip(dataset.class_names, probs)},
        }
        for scan, p, probs in zip(dataset.scans, predicted, probabilities)
    }
    return {"accuracy": accuracy(predicted, references), "roc_auc": auc, "cases": cases}


def evaluate_survival(model: torch.nn.Module, dataset: FinetuneDataset) -> dict[str, Any]:
    """Harrell's concordance index of the predicted risk scores (``nan`` without a comparable pair).

    Returns:
        ``{"c_index", "cases": {case_id: {"time", "event", "risk_score"}}}``.
    """
    risks = [float(out.risk_scores[0]) for out in _scan_outputs(model, dataset)]
    times = [s.case.time for s in dataset.scans]
    events = [s.case.event for s in dataset.scans]
    cases = {
        scan.case.case_id: {"time": t, "event": e, "risk_score": r}
        for scan, t, e, r in zip(dataset.scans, times, events, risks)
    }
    return {"c_index": concordance_index(times, events, risks), "cases": cases}


def evaluate_labeled(model: torch.nn.Module, dataset: FinetuneDataset) -> dict[str, Any]:
    """Score ``model`` on every case of ``dataset`` with the metrics of its task (model left in eval mode)."""
    model.eval()
    evaluate = {
        "segmentation": evaluate_segmentation,
        "classification": evaluate_classification,
        "survival": evaluate_survival,
    }[dataset.task]
    return {"task": dataset.task, "num_cases": len(dataset.scans), **evaluate(model, dataset)}


__all__ = [
    "CSV_COLUMNS",
    "TASKS",
    "FinetuneDataset",
    "LabeledCase",
    "LabeledDataError",
    "LabeledScan",
    "class_names_of",
    "evaluate_classification",
    "evaluate_labeled",
    "evaluate_segmentation",
    "evaluate_survival",
    "find_labeled_cases",
    "load_labeled_cases",
    "load_labeled_scan",
    "mask_to_classes",
    "organ_segmentation_classes",
    "read_labeled_csv",
    "split_cases",
]
