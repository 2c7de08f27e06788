"""Score PASTA checkpoints on a corpus split: segmentation, detection, classification, reports.

For each scan of the split (on the segmentation model's grid, where the corpus masks are the
reference):

- **segmentation**: whole-scan sliding-window prediction; per reference lesion the Dice, HD95 and
  surface Dice of the predicted lesion voxels in the lesion's own neighbourhood (voxels nearer to
  it than to any other lesion, within ``LESION_REGION_MM``), so one lesion's score does not depend
  on another's; a lesion counts as detected when that Dice exceeds ``DETECTED_DICE``. Organ Dice
  per organ class.
- **detection**: the scan score is the volume (ml) of the largest predicted lesion component; ROC AUC
  of lesion vs lesion-free scans, over all scans and over plain (non-contrast) scans.
- **classification** (with a classification checkpoint): lesion type, malignancy and report
  attributes of each reference lesion, from a crop centred on it with its reference mask (the
  classifier is scored apart from the segmenter's misses); the scan's contrast phase.
- **report** (with a report checkpoint): the generated text against the corpus text (ROUGE-L, BLEU).

:func:`evaluate_on_corpus` returns the per-scan records, the overall numbers and a per-lesion-type
table; ``training/evaluate.py`` is its command line.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

from modeling_pasta.image_processing_pasta import segmentation_targets
from modeling_pasta.metrics import (
    accuracy,
    attribute_accuracy,
    dice_score,
    hausdorff95_mm,
    roc_auc,
    surface_dice,
    text_overlap,
)
from modeling_pasta.pipeline_pasta import PastaPipeline
from modeling_pasta.report import CATEGORICAL_ATTRIBUTES, LESION_TYPES

from .corpus import decode_sample, load_corpus
from .patches import lesion_labels, to_model_grid

logger = logging.getLogger(__name__)

#: A reference lesion's neighbourhood for its Dice: predicted voxels up to this far from it (mm).
LESION_REGION_MM = 20.0
#: A reference lesion is detected when its Dice exceeds this.
DETECTED_DICE = 0.1
#: Surface Dice tolerance (mm).
SURFACE_TOLERANCE_MM = 2.0


def load_checkpoints(path: str | Path, *, sliding_window_overlap: float | None = None) -> PastaPipeline:
    """The :class:`PastaPipeline` of ``path`` (a pipeline folder or one checkpoint), optionally with
    another sliding-window overlap for the segmentation part."""
    pipeline = PastaPipeline.from_pretrained(path)
    if sliding_window_overlap is not None and "segmentation" in pipeline.processors:
        pipeline.processors["segmentation"].sliding_window_overlap = float(sliding_window_overlap)
    return pipeline


@dataclass
class LesionRecord:
    case_id: str
    lesion_id: int
    type: str
    volume_ml: float
    dice: float | None = None
    hd95_mm: float | None = None
    surface_dice: float | None = None
    predicted: dict[str, str] = field(default_factory=dict)
    reference: dict[str, str] = field(default_factory=dict)


@dataclass
class ScanRecord:
    case_id: str
    phase: str
    has_lesion: bool
    detection_score_ml: float | None = None
    lesion_dice: float | None = None
    organ_dice: dict[str, float] = field(default_factory=dict)
    predicted_phase: str | None = None
    report_text: str | None = None
    generated_text: str | None = None


def _largest_component_ml(mask: np.ndarray, voxel_ml: float) -> float:
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return 0.0
    return float(np.bincount(components.ravel())[1:].max()) * voxel_ml


def _lesion_regions(lesion_mask: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Label map: each voxel within ``LESION_REGION_MM`` of a lesion carries the nearest lesion's id."""
    distance, nearest = ndimage.distance_transform_edt(lesion_mask == 0, sampling=spacing_mm, return_indices=True)
    regions = lesion_mask[tuple(nearest)]
    regions[distance > LESION_REGION_MM] = 0
    return regions


def _score_segmentation(
    scan, labels: np.ndarray, config: Any, scan_record: ScanRecord, lesions: list[LesionRecord]
) -> None:
    spacing = scan.spacing_mm
    voxel_ml = float(np.prod(spacing)) / 1000.0
    predicted = labels == config.lesion_label_id
    scan_record.detection_score_ml = _largest_component_ml(predicted, voxel_ml)
    if scan_record.has_lesion:
        scan_record.lesion_dice = dice_score(predicted, scan.lesion_mask > 0)
    regions = _lesion_regions(scan.lesion_mask, spacing)
    for record in lesions:
        reference = scan.lesion_mask == record.lesion_id
        if not reference.any():
            continue
        mine = predicted & (regions == record.lesion_id)
        record.dice = dice_score(mine, reference)
        record.hd95_mm = hausdorff95_mm(mine, reference, spacing) if mine.any() else None
        record.surface_dice = surface_dice(mine, reference, spacing, SURFACE_TOLERANCE_MM) if mine.any() else 0.0
    targets = segmentation_targets(scan.organ_map, None, config)
    for class_id, name in config.id2label.items():
        if class_id in (0, config.lesion_label_id):
            continue
        reference = (targets == class_id) & (scan.lesion_mask == 0)
        if reference.sum() >= 10:  # organs that are (nearly) absent from the scan are not scored
            scan_record.organ_dice[name] = dice_score((labels == class_id) & (scan.lesion_mask == 0), reference)


def _classify_lesions(scan, model, processor, lesions: list[LesionRecord], scan_record: ScanRecord) -> None:
    config = model.config
    device = next(model.parameters()).device
    pixel_values = torch.from_numpy(scan.pixel_values)[None]
    with torch.inference_mode():
        logits = model(pixel_values=processor.crop(pixel_values).to(device)).logits
    if "phase" in logits:
        scan_record.predicted_phase = config.classification_tasks["phase"][int(logits["phase"].argmax())]
    report = {lesion.id: lesion for lesion in scan.sample.report.lesions}
    for record in lesions:
        voxels = scan.lesion_mask == record.lesion_id
        if not voxels.any():
            continue
        center = np.argwhere(voxels).mean(axis=0)
        region = torch.from_numpy(voxels.astype(np.float32))[None, None]
        with torch.inference_mode():
            logits = model(
                pixel_values=processor.crop(pixel_values, center).to(device),
                lesion_mask=processor.crop(region, center).to(device),
            ).logits
        reference = lesion_labels(config, report[record.lesion_id], scan.sample.phase, present=True)
        for task in config.classification_tasks:
            if task in config.scan_level_tasks or task not in reference or reference[task] < 0:
                continue
            classes = config.classification_tasks[task]
            scores = logits[task][0].float().clone()
            if task == "lesion_type" and "none" in classes:  # "none" is for lesion-free regions, not a type
                scores[classes.index("none")] = -math.inf
            record.predicted[task] = classes[int(scores.argmax())]
            record.reference[task] = classes[reference[task]]


def _write_report(scan, model, processor, tokenizer) -> str:
    device = next(model.parameters()).device
    pixel_values = processor.crop(torch.from_numpy(scan.pixel_values)[None])
    with torch.inference_mode():
        ids = model.generate(pixel_values=pixel_values.to(device), do_sample=False)
    return tokenizer.decode(ids[0], skip_special_tokens=True).strip()


def _rows(corpora: Sequence[tuple[str, str]], limit: int | None) -> Iterable[dict[str, Any]]:
    """The rows of each corpus split in turn, the first ``limit`` of each."""
    for path, split in corpora:
        for count, row in enumerate(load_corpus(path, split, decode=False)):
            if limit is not None and count >= limit:
                break
            yield row


def evaluate_on_corpus(
    pipeline: PastaPipeline,
    corpora: Sequence[tuple[str, str]],
    *,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the pipeline's models on ``(corpus path or repo id, split)`` pairs.

    Returns:
        ``{"overall": {...}, "per_type": {type: {...}}, "scans": [...], "lesions": [...], "seconds": s}``.
    """
    from tqdm.auto import tqdm

    if "segmentation" not in pipeline.models and "classification" not in pipeline.models:
        raise ValueError(
            f"evaluation needs a segmentation or classification checkpoint; the pipeline has {sorted(pipeline.models)}"
        )
    start = time.perf_counter()
    scans: list[ScanRecord] = []
    lesions: list[LesionRecord] = []
    grids: dict[tuple, Any] = {}
    for row in tqdm(_rows(corpora, limit), desc="evaluate", unit="scan", disable=not progress):
        sample = decode_sample(row)
        record = ScanRecord(sample.case_id, sample.phase, bool(sample.report.lesions), report_text=sample.report_text)
        mine = [
            LesionRecord(sample.case_id, lesion.id, lesion.type, lesion.volume_ml) for lesion in sample.report.lesions
        ]
        grids.clear()

        def grid(part: str, with_labels: bool = True):
            processor = pipeline.processors[part]
            key = (tuple(processor.target_spacing_mm), processor.intensity_scheme, with_labels)
            if key not in grids:
                grids[key] = to_model_grid(sample, processor, with_labels=with_labels)
            return grids[key]

        if "segmentation" in pipeline.models:
            model, processor = pipeline.models["segmentation"], pipeline.processors["segmentation"]
            scan = grid("segmentation")
            pixel_values = torch.from_numpy(scan.pixel_values)[None]
            labels = processor.predict_segmentation(model, pixel_values)[0].cpu().numpy()
            _score_segmentation(scan, labels, model.config, record, mine)
        if "classification" in pipeline.models:
            _classify_lesions(
                grid("classification"), pipeline.models["classification"], pipeline.processors["classification"],
                mine, record,
            )
        if "report_generation" in pipeline.models and pipeline.tokenizer is not None:
            record.generated_text = _write_report(
                grid("report_generation", with_labels=False), pipeline.models["report_generation"],
                pipeline.processors["report_generation"], pipeline.tokenizer,
            )
        scans.append(record)
        lesions.extend(mine)
        logger.debug("%s: lesion dice %s, detection %.3f ml", sample.case_id, record.lesion_dice, record.detection_score_ml or 0)
    results = summarize(scans, lesions)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["corpora"] = [f"{path}:{split}" for path, split in corpora]
    return results


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return round(float(np.mean(kept)), 4) if kept else None


def _auc(scans: Sequence[ScanRecord]) -> float | None:
    scored = [s for s in scans if s.detection_score_ml is not None]
    if len({s.has_lesion for s in scored}) < 2:
        return None
    return round(roc_auc([int(s.has_lesion) for s in scored], [s.detection_score_ml for s in scored]), 4)


def _classification_summary(lesions: Sequence[LesionRecord]) -> dict[str, Any]:
    classified = [lesion for lesion in lesions if lesion.predicted]
    if not classified:
        return {}
    out: dict[str, Any] = {}
    for task in ("lesion_type", "malignancy"):
        pairs = [(l.predicted[task], l.reference[task]) for l in classified if task in l.predicted]
        if pairs:
            out[f"{task}_accuracy"] = round(accuracy(*zip(*pairs)), 4)
    attributes = [a for a in CATEGORICAL_ATTRIBUTES if any(a in l.predicted for l in classified)]
    if attributes:
        scores = attribute_accuracy(
            [l.predicted for l in classified], [l.reference for l in classified], attributes=attributes
        )
        out["attribute_accuracy"] = round(scores.pop("mean"), 4)
        out["attribute_accuracy_per_attribute"] = {k: round(v, 4) for k, v in scores.items()}
    return out


def summarize(scans: Sequence[ScanRecord], lesions: Sequence[LesionRecord]) -> dict[str, Any]:
    """Overall numbers and the per-lesion-type table from the per-scan and per-lesion records."""
    segmented = [l for l in lesions if l.dice is not None]
    overall: dict[str, Any] = {
        "scans": len(scans),
        "lesion_scans": sum(s.has_lesion for s in scans),
        "lesions": len(lesions),
    }
    if segmented:
        overall.update(
            {
                "mean_lesion_dice": _mean(l.dice for l in segmented),
                "median_lesion_dice": round(float(np.median([l.dice for l in segmented])), 4),
                "lesion_detection_rate": round(float(np.mean([l.dice > DETECTED_DICE for l in segmented])), 4),
                "mean_hd95_mm_detected": _mean(l.hd95_mm for l in segmented if l.dice > DETECTED_DICE),
                "mean_surface_dice": _mean(l.surface_dice for l in segmented),
                "mean_scan_lesion_dice": _mean(s.lesion_dice for s in scans),
                "detection_auc": _auc(scans),
                "detection_auc_plain": _auc([s for s in scans if s.phase == "plain"]),
                "detection_auc_contrast": _auc([s for s in scans if s.phase != "plain"]),
                "plain_scans": sum(s.phase == "plain" for s in scans),
            }
        )
        organs = defaultdict(list)
        for scan in scans:
            for name, value in scan.organ_dice.items():
                organs[name].append(value)
        overall["organ_dice"] = {name: _mean(values) for name, values in sorted(organs.items())}
        overall["mean_organ_dice"] = _mean(overall["organ_dice"].values())
    overall.update(_classification_summary(lesions))
    phased = [s for s in scans if s.predicted_phase is not None]
    if phased:
        overall["phase_accuracy"] = round(accuracy([s.predicted_phase for s in phased], [s.phase for s in phased]), 4)
    written = [s for s in scans if s.generated_text is not None]
    if written:
        overlap = text_overlap([s.generated_text for s in written], [s.report_text for s in written])
        overall.update({f"report_{k}": round(v, 4) for k, v in overlap.items()})

    per_type: dict[str, dict[str, Any]] = {}
    for lesion_type in LESION_TYPES:
        mine = [l for l in lesions if l.type == lesion_type]
        if not mine:
            continue
        row: dict[str, Any] = {"lesions": len(mine)}
        scored = [l for l in mine if l.dice is not None]
        if scored:
            row["mean_dice"] = _mean(l.dice for l in scored)
            row["detection_rate"] = round(float(np.mean([l.dice > DETECTED_DICE for l in scored])), 4)
        row.update(
            {k: v for k, v in _classification_summary(mine).items() if k != "attribute_accuracy_per_attribute"}
        )
        per_type[lesion_type] = row
    return {
        "overall": overall,
        "per_type": per_type,
        "scans": [vars(s) for s in scans],
        "lesions": [vars(l) for l in lesions],
    }


def format_table(results: dict[str, Any]) -> str:
    """The per-lesion-type table and the overall numbers as Markdown."""
    columns = [
        ("lesions", "lesions"),
        ("mean_dice", "Dice"),
        ("detection_rate", "detected"),
        ("lesion_type_accuracy", "type acc."),
        ("malignancy_accuracy", "malignancy acc."),
        ("attribute_accuracy", "attribute acc."),
    ]
    present = [(key, title) for key, title in columns if any(key in row for row in results["per_type"].values())]

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| lesion type | " + " | ".join(title for _, title in present) + " |"]
    lines.append("| --- |" + " ---: |" * len(present))
    for lesion_type, row in results["per_type"].items():
        lines.append(f"| {lesion_type} | " + " | ".join(cell(row.get(key)) for key, _ in present) + " |")
    overall = results["overall"]
    lines.append("")
    lines.append("| overall | value |")
    lines.append("| --- | ---: |")
    for key, value in overall.items():
        if isinstance(value, dict):
            continue
        lines.append(f"| {key} | {cell(value)} |")
    return "\n".join(lines)


__all__ = [
    "DETECTED_DICE",
    "LESION_REGION_MM",
    "evaluate_on_corpus",
    "format_table",
    "load_checkpoints",
    "summarize",
]
