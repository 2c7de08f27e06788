"""Shared fixtures: offline settings, the real CT folder (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    """``$PASTA_REAL_DATA`` or ``../shared/data`` beside the repo, if it holds ``ct/``."""
    candidates = [os.environ.get("PASTA_REAL_DATA"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ct").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real data root (``ct/`` and ``mr/``); tests using it skip where it is absent."""
    root = real_data_root()
    if root is None:
        pytest.skip(
            "real CT data not found: set PASTA_REAL_DATA or place shared/data beside the repo "
            "(CI always has it)"
        )
    return root


@pytest.fixture(scope="session")
def real_ct_dir(real_data: Path) -> Path:
    return real_data / "ct"


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny real pipeline folder (segmentation + classification), saved like the shipped checkpoint.

    The segmenter has hand-set weights that call bone-bright voxels "lesion" (see
    :func:`pasta_testing.bright_lesion_segmenter`), so outputs are deterministic and land on
    known anatomy; the classifier is randomly initialised. 8 mm model grid: fast on CPU.
    """
    import torch
    from pasta_testing import bright_lesion_segmenter, tiny_config

    from modeling_pasta.image_processing_pasta import PastaImageProcessor
    from modeling_pasta.modeling_pasta import PastaForClassification
    from modeling_pasta.pipeline_pasta import PastaPipeline

    torch.manual_seed(0)
    config = tiny_config(target_spacing_mm=[8.0, 8.0, 8.0])
    processor = PastaImageProcessor.from_model_config(config, sliding_window_batch_size=16, sliding_window_overlap=0.25)
    pipeline = PastaPipeline(
        segmentation_model=bright_lesion_segmenter(config, threshold=2.5),
        segmentation_processor=processor,
        classification_model=PastaForClassification(config),
        device="cpu",
    )
    folder = tmp_path_factory.mktemp("model") / "pasta-tiny"
    pipeline.save_pretrained(folder)
    return folder
