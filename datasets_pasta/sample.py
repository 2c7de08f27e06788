"""One corpus sample: lesions inserted into a healthy base, the report measured from the result.

:func:`generate_sample` is the unit of work of the corpus writer. Its steps:

1. insert each requested lesion into a float working copy of the base CT (HU);
2. round the CT to int16 HU — these are the final voxels that will be saved;
3. measure every report field that the voxels determine (size, volume, mean HU, density,
   organ and location, adjacency) with :func:`modeling_pasta.report.measure_lesion` on the
   final CT and lesion mask, and take the rest (shape, margin, texture, ...) from the lesion
   model's specification;
   (with the learned stage, each lesion is refined and quality-checked right after it is drawn,
   so the measurements see the refined voxels);
4. validate the report against the schema, render the impression and a free-text report;
5. optionally simulate an FDG PET (SUV) on the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from modeling_pasta.report import (
    LESION_TYPES,
    LesionReport,
    StructuredReport,
    measure_lesion,
    render_impression,
    validate_report,
    voxel_spacing,
)

from .bases import HealthyBase
from .lesions import DEFAULT_EDGE_MM, SynthesizedLesion, synthesize_lesion
from .report_text import render_report_text
from .synthesis import LesionSynthesis, QualityControlError, host_organ_mask


@dataclass
class CorpusSample:
    """One row of the corpus, numpy side (column meanings: ``REPORT_SCHEMA.md``).

    Attributes:
        ct_hu: CT in HU, int16.
        lesion_mask: 0 background, k = the lesion with report id k (uint8).
        organ_map: organ label ids of the healthy anatomy (uint8, TotalSegmentator "total").
        pet_suv: simulated FDG PET in SUV (float32) or None.
        affine: voxel -> RAS+ world (mm), 4x4.
        synthesis_log: one record per lesion of the learned stage (QC attempts); not a column.
    """

    case_id: str
    ct_hu: np.ndarray
    lesion_mask: np.ndarray
    organ_map: np.ndarray
    pet_suv: np.ndarray | None
    affine: np.ndarray
    lesion_types: list[str]
    phase: str
    report: StructuredReport
    report_text: str
    base_id: str
    seed: int
    synthesis_log: list[dict] = field(default_factory=list)

    @property
    def spacing_mm(self) -> list[float]:
        return [float(s) for s in voxel_spacing(self.affine)]


def generate_sample(
    base: HealthyBase,
    lesion_types: Sequence[str],
    *,
    seed: int,
    case_id: str,
    with_pet: bool = False,
    size_class: str | None = None,
    synthesis: LesionSynthesis | None = None,
) -> CorpusSample:
    """Insert ``lesion_types`` (may be empty: a healthy scan) into ``base`` and report them.

    Args:
        base: the healthy base (already resampled/augmented as wanted).
        lesion_types: one entry per lesion, keys of :data:`modeling_pasta.report.LESION_TYPES`.
        seed: the sample's own seed; the same base, types and seed give identical outputs.
        case_id: the row's stable id.
        with_pet: also simulate an FDG PET channel.
        size_class: force a lesion size class (see :data:`datasets_pasta.lesions.SIZE_CLASSES`).
        synthesis: the learned stage: refine each drawn lesion and/or keep it only when a segmenter
            finds it, redrawing rejected ones (:mod:`datasets_pasta.synthesis`). Attempts are
            recorded in ``synthesis_log``. The report is measured after it, from the final voxels.

    Raises:
        ValueError: an unknown lesion type (the message lists the valid ones).
        datasets_pasta.bases.BaseError: the base lacks an organ a type needs;
            :class:`datasets_pasta.synthesis.QualityControlError` when no attempt passed QC.
    """
    unknown = [t for t in lesion_types if t not in LESION_TYPES]
    if unknown:
        raise ValueError(f"unknown lesion type(s) {unknown}; valid types: {', '.join(LESION_TYPES)}")
    rng = np.random.default_rng(seed)
    ct = base.ct_hu.astype(np.float32)
    occupied = np.zeros(ct.shape, dtype=bool)
    lesions: list[SynthesizedLesion] = []
    synthesis_log: list[dict] = []
    for lesion_type in lesion_types:
        if synthesis is None:
            lesion = synthesize_lesion(ct, base, lesion_type, rng, size_class=size_class, occupied=occupied)
        else:
            try:
                lesion, record = _learned_lesion(ct, base, lesion_type, rng, size_class, occupied, synthesis)
            except QualityControlError as err:
                err.records[:0] = synthesis_log  # this sample's earlier lesions were drawn too
                raise
            synthesis_log.append(record)
        lesions.append(lesion)
        occupied |= lesion.mask

    ct_hu = np.clip(np.rint(ct), -1024, 3071).astype(np.int16)
    lesion_mask = np.zeros(ct.shape, dtype=np.uint8)
    for k, lesion in enumerate(lesions, start=1):
        lesion_mask[lesion.mask & (lesion_mask == 0)] = k

    reports = []
    for k, lesion in enumerate(lesions, start=1):
        spec = lesion.spec
        measured = measure_lesion(
            ct_hu, lesion_mask == k, base.organ_map, base.affine, base.label_names,
            host_organ=LESION_TYPES[spec.lesion_type].organ,
        )
        reports.append(
            LesionReport(
                id=k,
                type=spec.lesion_type,
                malignant=LESION_TYPES[spec.lesion_type].malignant,
                density_variation=spec.density_variation,
                shape=spec.shape,
                margin=spec.margin,
                enhancement=spec.enhancement,
                texture=spec.texture,
                special_features=list(spec.special_features),
                **measured.report_fields(),
            )
        )
    report = StructuredReport(
        phase=base.phase,
        spacing_mm=[float(s) for s in base.spacing_mm],
        lesions=reports,
        impression=render_impression(reports),
        modality="PET/CT" if with_pet else "CT",
    )
    report = validate_report(report.to_dict())
    text = render_report_text(report, rng)

    pet = None
    if with_pet:
        from .pet import simulate_pet

        pet = simulate_pet(base.organ_map, base.label_names, lesion_mask, list(lesion_types), base.spacing_mm, rng)

    return CorpusSample(
        case_id=case_id,
        ct_hu=ct_hu,
        lesion_mask=lesion_mask,
        organ_map=base.organ_map,
        pet_suv=pet,
        affine=np.asarray(base.affine, dtype=np.float64),
        lesion_types=list(lesion_types),
        phase=base.phase,
        report=report,
        report_text=text,
        base_id=base.base_id,
        seed=int(seed),
        synthesis_log=synthesis_log,
    )


def _learned_lesion(
    ct: np.ndarray,
    base: HealthyBase,
    lesion_type: str,
    rng: np.random.Generator,
    size_class: str | None,
    occupied: np.ndarray,
    synthesis: LesionSynthesis,
) -> tuple[SynthesizedLesion, dict]:
    """Draw, refine and quality-check one lesion; a rejected lesion is undone and drawn again.

    Returns the lesion and its record: ``type``, ``detected_fractions`` and ``passed`` per
    attempt, and ``kept`` (False only in the records a :class:`QualityControlError` carries).

    Raises:
        QualityControlError: no attempt passed (the caller redraws the sample with another seed).
    """
    record: dict = {"type": lesion_type, "detected_fractions": [], "passed": [], "kept": True}
    qc = synthesis.quality_control
    for _ in range(synthesis.attempts):
        before = ct.copy() if qc is not None else None
        lesion = synthesize_lesion(ct, base, lesion_type, rng, size_class=size_class, occupied=occupied)
        if synthesis.refiner is not None:
            host = host_organ_mask(base.organ_map, lesion_type, base.label_names) | lesion.mask
            edge = float(lesion.spec.params.get("edge_mm", DEFAULT_EDGE_MM))
            synthesis.refiner.refine(ct, lesion.mask, host, lesion_type, base.spacing_mm, edge_mm=edge, protected=occupied)
        if qc is None:
            return lesion, record
        fraction = qc.detected_fraction(ct, base.affine, lesion.mask)
        record["detected_fractions"].append(round(fraction, 4))
        record["passed"].append(fraction >= qc.threshold)
        if fraction >= qc.threshold:
            return lesion, record
        ct[...] = before  # undo the rejected lesion
    record["kept"] = False
    raise QualityControlError(
        f"quality control rejected {synthesis.attempts} {lesion_type} lesion(s) in base {base.base_id!r}: "
        f"the segmenter found at most {max(record['detected_fractions']):.0%} of their voxels "
        f"(threshold {qc.threshold:.0%}); lower --qc-threshold or use a stronger --qc-model",
        records=[record],
    )
