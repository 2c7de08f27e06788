"""End-to-end inference: a CT in; lesion and organ masks, a lesion table, attributes and a report out.

:class:`PastaPipeline` combines up to three checkpoints that share the PASTA encoder design:

- ``segmentation`` (:class:`PastaForSegmentation`): organ + lesion masks on the input's grid;
  lesions are the connected components of the lesion class (tiny ones dropped), measured by
  :func:`~modeling_pasta.report.measure_lesion` on the original CT (HU) and the predicted organs.
- ``classification`` (:class:`PastaForClassification`): scan-level tasks (phase, detection) on
  the central ``patch_size`` crop, lesion-level tasks (type, attributes) on a crop around each
  lesion with its mask; with segmentation, a validated :class:`StructuredReport`.
- ``report_generation`` (:class:`PastaForReportGeneration` + its tokenizer): the free-text report,
  generated from the central crop of the scan at that model's own spacing.

A missing checkpoint leaves its part of the prediction empty, with a logged warning.
``PastaPipeline.from_pretrained(folder)`` reads ``folder/<part>/`` sub-checkpoints (or one
checkpoint folder); ``save_pretrained`` writes that layout.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import logging

from .image_io import Volume, save_nifti
from .image_processing_pasta import PastaImageProcessor, VolumeInput
from .modeling_pasta import (
    PastaForClassification,
    PastaForReportGeneration,
    PastaForSegmentation,
    PastaPreTrainedModel,
)
from .report import (
    LESION_TYPES,
    SCHEMA_VERSION,
    OrganStatistics,
    StructuredReport,
    measure_lesion,
    render_impression,
    validate_report,
)

logger = logging.get_logger(__name__)

#: Sub-checkpoint folder -> (model class, prefix of its ``PastaPipeline`` arguments).
PIPELINE_PARTS: dict[str, tuple[type[PastaPreTrainedModel], str]] = {
    "segmentation": (PastaForSegmentation, "segmentation"),
    "classification": (PastaForClassification, "classification"),
    "report_generation": (PastaForReportGeneration, "report"),
}
#: Report attributes that come from the classification head (the measured ones come from voxels).
PREDICTED_ATTRIBUTES = ("density_variation", "shape", "margin", "enhancement", "texture")
#: Voxels around a lesion searched for the organ its voxels belonged to.
ORGAN_FILL_MARGIN_VOXELS = 5


@dataclass
class LesionFinding:
    """One predicted lesion: measured fields (from voxels) and predicted attributes (from the head)."""

    id: int
    volume_ml: float
    size_mm: list[float]
    mean_hu: float
    organ: str
    location: str
    density: str
    relation_to_adjacent: str
    adjacent_organs: list[str]
    centroid_ras_mm: list[float]
    attributes: dict[str, str] = field(default_factory=dict)
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PastaPrediction:
    """Everything :class:`PastaPipeline` predicts for one scan; masks live on the input's grid.

    Attributes:
        source: the input (path or description).
        affine: the input's voxel -> RAS+ affine (mm), shared by both masks.
        lesion_mask: 0 background, k = lesion k (``lesions[k-1]``), or None without segmentation.
        organ_map: organ class ids (``organ_labels``); lesion voxels carry their host organ.
        organ_labels: organ class id -> name (TotalSegmentator label names or group names).
        lesions: the lesion table.
        scan_predictions: scan-level task -> class probabilities.
        report: the validated structured report (needs segmentation and classification).
        report_text: the generated free-text report (needs the report model).
    """

    source: str
    affine: np.ndarray
    lesion_mask: np.ndarray | None = None
    organ_map: np.ndarray | None = None
    organ_labels: dict[int, str] = field(default_factory=dict)
    lesions: list[LesionFinding] = field(default_factory=list)
    scan_predictions: dict[str, dict[str, float]] = field(default_factory=dict)
    report: StructuredReport | None = None
    report_text: str | None = None

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write the masks (NIfTI with the input's affine), the lesion table and the reports."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        if self.lesion_mask is not None:
            written["lesion_mask"] = save_nifti(self.lesion_mask, self.affine, folder / "lesion_mask.nii.gz")
            written["organ_map"] = save_nifti(self.organ_map, self.affine, folder / "organ_map.nii.gz")
            written["organ_labels"] = folder / "organ_labels.json"
            written["organ_labels"].write_text(json.dumps({str(k): v for k, v in self.organ_labels.items()}, indent=1))
        written["lesions"] = folder / "lesions.json"
        table = {"lesions": [lesion.to_dict() for lesion in self.lesions], "scan": self.scan_predictions}
        written["lesions"].write_text(json.dumps(table, indent=1))
        if self.report is not None:
            written["report"] = folder / "report.json"
            written["report"].write_text(self.report.to_json(indent=1))
        if self.report_text is not None:
            written["report_text"] = folder / "generated_report.txt"
            written["report_text"].write_text(self.report_text + "\n")
        return written


def _probabilities(logits: torch.Tensor, classes: list[str]) -> list[dict[str, float]]:
    probs = logits.float().softmax(dim=-1).cpu().numpy()
    return [{name: round(float(p), 4) for name, p in zip(classes, row)} for row in probs]


class PastaPipeline:
    """CT path in, :class:`PastaPrediction` out (see the module docstring for what each part adds).

    Args:
        segmentation_model / classification_model / report_model: the checkpoints (any may be None,
            not all).
        tokenizer: the report tokenizer (required with ``report_model``).
        segmentation_processor / classification_processor / report_processor: their processors
            (default: built from each model's config).
        min_lesion_volume_ml: connected components of the lesion class smaller than this are dropped.
        device: where the models run (default CUDA when available, else CPU).
    """

    def __init__(
        self,
        segmentation_model: PastaForSegmentation | None = None,
        classification_model: PastaForClassification | None = None,
        report_model: PastaForReportGeneration | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        segmentation_processor: PastaImageProcessor | None = None,
        classification_processor: PastaImageProcessor | None = None,
        report_processor: PastaImageProcessor | None = None,
        min_lesion_volume_ml: float = 0.05,
        device: str | torch.device | None = None,
    ):
        if segmentation_model is None and classification_model is None and report_model is None:
            raise ValueError("PastaPipeline needs at least one model (segmentation, classification or report)")
        if report_model is not None and tokenizer is None:
            raise ValueError("report_model needs the report tokenizer saved with it (tokenizer=...)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.models: dict[str, PastaPreTrainedModel] = {}
        self.processors: dict[str, PastaImageProcessor] = {}
        given = {
            "segmentation": (segmentation_model, segmentation_processor),
            "classification": (classification_model, classification_processor),
            "report_generation": (report_model, report_processor),
        }
        for part, (model, processor) in given.items():
            if model is None:
                continue
            self.models[part] = model.to(self.device).eval()
            self.processors[part] = processor or PastaImageProcessor.from_model_config(model.config)
        self.tokenizer = tokenizer
        self.min_lesion_volume_ml = float(min_lesion_volume_ml)

    # ----------------------------------------------------------------------------------------
    # Loading and saving
    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "PastaPipeline":
        """Load ``path/segmentation``, ``path/classification``, ``path/report_generation`` (those
        present), or ``path`` itself when it is a single checkpoint; keyword arguments go to ``__init__``."""
        path = Path(path)
        folders = {part: path / part for part in PIPELINE_PARTS if (path / part / "config.json").is_file()}
        if not folders and (path / "config.json").is_file():
            architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
            folders = {
                part: path for part, (model_class, _) in PIPELINE_PARTS.items() if model_class.__name__ in architectures
            }
        if not folders:
            raise ValueError(
                f"{path}: no PASTA checkpoint found (expected config.json of a segmentation, classification "
                f"or report-generation model, or sub-folders {list(PIPELINE_PARTS)})"
            )
        arguments: dict[str, Any] = {}
        for part, (model_class, name) in PIPELINE_PARTS.items():
            folder = folders.get(part)
            if folder is None:
                logger.warning("%s: no %s checkpoint; that part of the prediction is omitted", path, part)
                continue
            arguments[f"{name}_model"] = model_class.from_pretrained(folder)
            if (folder / "preprocessor_config.json").is_file():
                arguments[f"{name}_processor"] = PastaImageProcessor.from_pretrained(folder)
            if part == "report_generation":
                # the plain fast tokenizer class: AutoTokenizer would consult the remote-code config first
                arguments["tokenizer"] = PreTrainedTokenizerFast.from_pretrained(folder)
        arguments.update(kwargs)
        return cls(**arguments)

    def save_pretrained(self, path: str | Path) -> None:
        """Write every part as ``path/<part>/`` (model, processor, and the tokenizer with the report model)."""
        path = Path(path)
        for part, model in self.models.items():
            model.save_pretrained(path / part)
            self.processors[part].save_pretrained(path / part)
            if part == "report_generation":
                self.tokenizer.save_pretrained(path / part)

    # ----------------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------------

    def __call__(self, image: VolumeInput, pet: VolumeInput | None = None) -> PastaPrediction:
        """Predict for one CT (path to NIfTI / DICOM / zip, a Volume, or ``(array, affine)``)."""
        volume = PastaImageProcessor.load(image)
        pet_volume = PastaImageProcessor.load(pet) if pet is not None else None
        prediction = PastaPrediction(source=volume.source, affine=np.asarray(volume.affine))
        if "segmentation" in self.models:
            self._segment(volume, pet_volume, prediction)
        else:
            logger.warning("no segmentation model: no masks, lesion table or structured report")
        if "classification" in self.models:
            self._classify(volume, pet_volume, prediction)
            if "segmentation" in self.models:
                prediction.report = self._structured_report(volume, prediction)
        else:
            logger.warning("no classification model: no attributes, phase or structured report")
        if "report_generation" in self.models:
            prediction.report_text = self._write_report(volume, pet_volume)
        else:
            logger.warning("no report-generation model: no free-text report")
        return prediction

    def _segment(self, volume: Volume, pet: Volume | None, prediction: PastaPrediction) -> None:
        model, processor = self.models["segmentation"], self.processors["segmentation"]
        inputs = processor.preprocess(volume, pet=pet)
        labels = processor.predict_segmentation(model, inputs["pixel_values"].to(self.device))[0]
        classes = processor.postprocess_segmentation(labels, inputs["geometry"][0])
        config = model.config
        lesion_id = config.lesion_label_id if config.lesion_label is not None else None  # organ-only models
        lesion_voxels = classes == lesion_id if lesion_id is not None else np.zeros(classes.shape, dtype=bool)
        components, count = ndimage.label(lesion_voxels, structure=np.ones((3, 3, 3), dtype=bool))
        voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
        kept = [
            int(i) + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] * voxel_ml >= self.min_lesion_volume_ml
        ]
        renumber = np.zeros(count + 1, dtype=np.uint16)
        renumber[kept] = np.arange(1, len(kept) + 1, dtype=np.uint16)
        lesion_mask = renumber[components]
        if len(kept) < count:
            logger.info("dropped %d lesion component(s) below %.3f ml", count - len(kept), self.min_lesion_volume_ml)

        organ_map = np.where(lesion_voxels, 0, classes).astype(np.uint8)
        _fill_from_nearest_organ(organ_map, components, count)
        organ_labels = {i: n for i, n in config.id2label.items() if i not in (0, lesion_id)}
        prediction.lesion_mask, prediction.organ_map, prediction.organ_labels = lesion_mask, organ_map, organ_labels
        statistics = OrganStatistics(volume.array, organ_map, volume.affine) if kept else None
        for lesion_id in range(1, len(kept) + 1):
            measured = measure_lesion(
                volume.array, lesion_mask == lesion_id, organ_map, volume.affine, organ_labels,
                organ_statistics=statistics,
            )
            prediction.lesions.append(
                LesionFinding(
                    id=lesion_id,
                    volume_ml=measured.volume_ml,
                    size_mm=measured.size_mm,
                    mean_hu=measured.mean_hu,
                    organ=measured.organ,
                    location=measured.location,
                    density=measured.density,
                    relation_to_adjacent=measured.relation_to_adjacent,
                    adjacent_organs=measured.adjacent_organs,
                    centroid_ras_mm=measured.centroid_ras_mm,
                )
            )

    def _classify(self, volume: Volume, pet: Volume | None, prediction: PastaPrediction) -> None:
        model, processor = self.models["classification"], self.processors["classification"]
        config = model.config
        inputs = processor.preprocess(volume, pet=pet)
        pixel_values, geometry = inputs["pixel_values"], inputs["geometry"][0]
        with torch.inference_mode():
            logits = model(pixel_values=processor.crop(pixel_values).to(self.device)).logits
        prediction.scan_predictions = {
            task: _probabilities(logits[task], config.classification_tasks[task])[0] for task in config.scan_level_tasks
        }
        if not prediction.lesions:
            return
        masks = processor.resample_like((prediction.lesion_mask, volume.affine), geometry, is_label=True)
        to_voxel = np.linalg.inv(geometry.model_affine)
        crops, mask_crops = [], []
        for lesion in prediction.lesions:
            center = (to_voxel @ np.array([*lesion.centroid_ras_mm, 1.0]))[:3]
            region = torch.from_numpy((masks == lesion.id).astype(np.float32))[None, None]
            crops.append(processor.crop(pixel_values, center))
            mask_crops.append(processor.crop(region, center))
        with torch.inference_mode():
            logits = model(
                pixel_values=torch.cat(crops).to(self.device), lesion_mask=torch.cat(mask_crops).to(self.device)
            ).logits
        lesion_tasks = [t for t in config.classification_tasks if t not in config.scan_level_tasks]
        for task in lesion_tasks:
            for lesion, probs in zip(
                prediction.lesions, _probabilities(logits[task], config.classification_tasks[task])
            ):
                lesion.probabilities[task] = probs
                lesion.attributes[task] = max(probs, key=probs.get)

    def _structured_report(self, volume: Volume, prediction: PastaPrediction) -> StructuredReport | None:
        config = self.models["classification"].config
        needed = {"phase", "lesion_type", *PREDICTED_ATTRIBUTES}
        missing = sorted(needed - set(config.classification_tasks))
        if missing:
            logger.warning("the classification model lacks task(s) %s: no structured report", missing)
            return None
        items = []
        for lesion in prediction.lesions:
            types = {t: p for t, p in lesion.probabilities["lesion_type"].items() if t in LESION_TYPES}
            lesion_type = max(types, key=types.get)
            items.append(
                {
                    "id": lesion.id,
                    "type": lesion_type,
                    "malignant": LESION_TYPES[lesion_type].malignant,
                    "organ": lesion.organ,
                    "location": lesion.location,
                    "size_mm": lesion.size_mm,
                    "volume_ml": lesion.volume_ml,
                    "mean_hu": lesion.mean_hu,
                    "density": lesion.density,
                    "relation_to_adjacent": lesion.relation_to_adjacent,
                    "adjacent_organs": lesion.adjacent_organs,
                    **{attribute: lesion.attributes[attribute] for attribute in PREDICTED_ATTRIBUTES},
                    "special_features": [],
                    "confidence": round(types[lesion_type], 4),
                }
            )
        phases = prediction.scan_predictions["phase"]
        report = validate_report(
            {
                "schema_version": SCHEMA_VERSION,
                "modality": "PET/CT" if config.in_channels == 2 else "CT",
                "phase": max(phases, key=phases.get),
                "spacing_mm": [float(s) for s in volume.spacing_mm],
                "lesions": items,
                "impression": "",
            }
        )
        report.impression = render_impression(report.lesions)
        return report

    def _write_report(self, volume: Volume, pet: Volume | None) -> str:
        model, processor = self.models["report_generation"], self.processors["report_generation"]
        pixel_values = processor.crop(processor.preprocess(volume, pet=pet)["pixel_values"])
        with torch.inference_mode():
            token_ids = model.generate(pixel_values=pixel_values.to(self.device), do_sample=False)
        return self.tokenizer.decode(token_ids[0], skip_special_tokens=True).strip()


def _fill_from_nearest_organ(organ_map: np.ndarray, components: np.ndarray, count: int) -> None:
    """Give every lesion voxel (``components > 0``) the label of the nearest organ voxel, in place.

    Works box by box around each component; a component with no organ nearby stays 0.
    """
    for box in ndimage.find_objects(components, max_label=count):
        if box is None:
            continue
        grown = tuple(
            slice(max(s.start - ORGAN_FILL_MARGIN_VOXELS, 0), min(s.stop + ORGAN_FILL_MARGIN_VOXELS, n))
            for s, n in zip(box, organ_map.shape)
        )
        organs = organ_map[grown]
        holes = components[grown] > 0
        if not (organs > 0).any():
            continue
        _, nearest = ndimage.distance_transform_edt(organs == 0, return_indices=True)
        filled = organs[tuple(nearest)]
        organs[holes] = filled[holes]
