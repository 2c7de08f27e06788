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
