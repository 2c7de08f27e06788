"""modeling_pasta: PASTA configuration, models, processor, and the structured report schema."""

import importlib

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

# The model family is loaded on first use: ``import modeling_pasta.report`` (the generator's path)
# must not pay for importing torch and transformers.
_LAZY_EXPORTS: dict[str, str] = {
    "PastaConfig": ".configuration_pasta",
    "PastaTextConfig": ".configuration_pasta",
    "ImageReadError": ".image_io",
    "NotCTError": ".image_io",
    "check_ct": ".image_io",
    "Volume": ".image_io",
    "load_dicom_series": ".image_io",
    "load_image": ".image_io",
    "PastaGeometry": ".image_processing_pasta",
    "PastaImageProcessor": ".image_processing_pasta",
    "segmentation_targets": ".image_processing_pasta",
    "PastaForClassification": ".modeling_pasta",
    "PastaForLesionSynthesis": ".modeling_pasta",
    "PastaForMaskedImageModeling": ".modeling_pasta",
    "PastaForReportGeneration": ".modeling_pasta",
    "PastaForSegmentation": ".modeling_pasta",
    "PastaForSurvival": ".modeling_pasta",
    "PastaModel": ".modeling_pasta",
    "PastaPreTrainedModel": ".modeling_pasta",
    "LesionFinding": ".pipeline_pasta",
    "PastaPipeline": ".pipeline_pasta",
    "PastaPrediction": ".pipeline_pasta",
    "train_report_tokenizer": ".tokenization_pasta",
    "PASTA_VARIANTS": ".variants",
    "list_variants": ".variants",
    "pasta_config": ".variants",
}


def register_auto_classes() -> None:
    """Let ``AutoConfig`` / ``AutoModel...`` resolve ``model_type="pasta"`` without remote code.

    Runs on first access to any model-family name of this package. ``AutoImageProcessor`` goes
    through the checkpoint's ``auto_map`` (``trust_remote_code=True``): its local registry only
    takes 2D processors.
    """
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForImageSegmentation,
        AutoModelForImageTextToText,
        AutoModelForMaskedImageModeling,
    )

    from .configuration_pasta import PastaConfig, PastaTextConfig
    from .modeling_pasta import (
        PastaForClassification,
        PastaForMaskedImageModeling,
        PastaForReportGeneration,
        PastaForSegmentation,
        PastaModel,
    )

    AutoConfig.register(PastaConfig.model_type, PastaConfig, exist_ok=True)
    AutoConfig.register(PastaTextConfig.model_type, PastaTextConfig, exist_ok=True)
    for auto_class, model_class in (
        (AutoModel, PastaModel),
        (AutoModelForImageSegmentation, PastaForSegmentation),
        (AutoModelForImageClassification, PastaForClassification),
        (AutoModelForMaskedImageModeling, PastaForMaskedImageModeling),
        (AutoModelForImageTextToText, PastaForReportGeneration),
    ):
        auto_class.register(PastaConfig, model_class, exist_ok=True)


def __getattr__(name: str):
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global _auto_classes_registered
    value = getattr(importlib.import_module(module_name, __name__), name)
    if not _auto_classes_registered:
        register_auto_classes()
        _auto_classes_registered = True
    globals()[name] = value
    return value


_auto_classes_registered = False

__all__ = [
    "PASTA_VARIANTS",
    "ImageReadError",
    "LesionFinding",
    "PastaConfig",
    "PastaForClassification",
    "PastaForLesionSynthesis",
    "PastaForMaskedImageModeling",
    "PastaForReportGeneration",
    "PastaForSegmentation",
    "PastaForSurvival",
    "PastaGeometry",
    "PastaImageProcessor",
    "PastaModel",
    "PastaPipeline",
    "PastaPreTrainedModel",
    "PastaPrediction",
    "PastaTextConfig",
    "Volume",
    "list_variants",
    "load_dicom_series",
    "load_image",
    "pasta_config",
    "register_auto_classes",
    "segmentation_targets",
    "train_report_tokenizer",
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
