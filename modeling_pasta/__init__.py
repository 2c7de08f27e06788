"""modeling_pasta: PASTA configuration, models, processor, and the structured report schema."""

from .organs import ORGAN_GROUPS, TOTALSEGMENTATOR_TOTAL, load_label_names, readable_organ
from .report import (
    LESION_TYPES,
    SCHEMA_VERSION,
    LesionMeasurement,
    LesionReport,
    ReportValidationError,
    StructuredReport,
    measure_lesion,
    render_impression,
    validate_report,
)

__all__ = [
    "LESION_TYPES",
    "ORGAN_GROUPS",
    "SCHEMA_VERSION",
    "TOTALSEGMENTATOR_TOTAL",
    "LesionMeasurement",
    "LesionReport",
    "ReportValidationError",
    "StructuredReport",
    "load_label_names",
    "measure_lesion",
    "readable_organ",
    "render_impression",
    "validate_report",
]
