"""Helpers of the model tests (imported by test files as ``pasta_testing``): tiny configs, texts, phantoms."""

from __future__ import annotations

import numpy as np

from modeling_pasta.report import LESION_TYPES, LesionReport, render_impression
from modeling_pasta.variants import pasta_config

REPORT_TEXTS = [
    "No focal lesion identified. Liver, spleen and kidneys are unremarkable.",
    "A 34 mm hypodense heterogeneous mass in the right lobe of the liver, segment VII, suspicious for malignancy.",
    "Simple cyst of the left kidney, upper pole, 12 mm, water attenuation, no enhancement.",
    "Spiculated 21 mm nodule in the right upper lobe with ill-defined margins.",
    "Calcified gallstone of 8 mm in the gallbladder fundus, no wall thickening.",
    "Lytic lesion of the L3 vertebral body with cortical breach, suspicious for metastasis.",
]


def tiny_config(**overrides):
    """``pasta_tiny`` (3 stages, 4-8-16 features, 16^3 patches) with overrides."""
    return pasta_config("pasta_tiny", **overrides)


def report_corpus() -> list[str]:
    """Report texts: hand-written sentences plus the canonical impressions of every lesion type."""
    texts = list(REPORT_TEXTS)
    for i, name in enumerate(LESION_TYPES):
        info = LESION_TYPES[name]
        lesion = LesionReport(
            id=1,
            type=name,
            malignant=info.malignant,
            organ=info.organ,
            location=info.organ.replace("_", " "),
            size_mm=[10.0 + i, 8.0, 6.0],
            volume_ml=1.2,
            mean_hu=40.0,
            density="hypodense",
            density_variation="homogeneous",
            shape="round",
            margin="well_defined",
            enhancement="none",
            texture="solid",
            relation_to_adjacent="clear",
        )
        texts.append(render_impression([lesion]))
    return texts * 3


def sphere_phantom(
    shape: tuple[int, int, int] = (40, 36, 32),
    center: tuple[float, float, float] = (22.0, 15.0, 14.0),
    radius: float = 5.0,
    lesion_hu: int = 300,
) -> tuple[np.ndarray, np.ndarray]:
    """A constant soft-tissue block (40 HU) holding one bright sphere; returns (HU int16, sphere mask)."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    sphere = ((grid - np.asarray(center)) ** 2).sum(-1) <= radius**2
    ct = np.full(shape, 40, dtype=np.int16)
    ct[sphere] = lesion_hu
    return ct, sphere


def bright_lesion_segmenter(config, threshold: float = 1.5, organ: str = "liver"):
    """A :class:`PastaForSegmentation` with hand-set weights that labels unusually bright voxels "lesion".

    The first encoder convolution copies the input, the last decoder convolution copies that skip
    channel, and the head calls a voxel lesion when the twice instance-normalised intensity exceeds
    ``threshold``; every other voxel is ``organ``. Deterministic, no training needed.
    """
    import torch

    from modeling_pasta.modeling_pasta import PastaForSegmentation

    model = PastaForSegmentation(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".norm." not in name:
                parameter.zero_()
        model.pasta.encoder.stages[0].blocks[0].conv.weight[0, 0, 1, 1, 1] = 1.0
        last = model.pasta.decoder.stages[-1].blocks[0].conv
        last.weight[0, config.hidden_sizes[0], 1, 1, 1] = 1.0  # skip channel 0 comes after the upsampled ones
        model.segmentation_head.bias.fill_(-100.0)
        model.segmentation_head.bias[config.label2id[organ]] = 0.0
        lesion = config.lesion_label_id
        model.segmentation_head.weight[lesion, 0] = 10.0
        model.segmentation_head.bias[lesion] = -10.0 * threshold
    return model
