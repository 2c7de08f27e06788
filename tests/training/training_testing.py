"""Helpers of the training tests: the training scripts as modules and a tiny-run wrapper."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

TRAINING_DIR = Path(__file__).resolve().parents[2] / "training"
#: Lesion types of the tiny corpus (organs a 10 mm phantom holds well).
TINY_TYPES = ["liver_cyst", "kidney_cyst", "lung_cancer"]
#: pasta_tiny on the tiny corpus's 10 mm grid.
TINY = ["--variant", "pasta_tiny", "--spacing-mm", "10", "10", "10", "--batch-size", "2", "--no-progress"]


def load_script(name: str) -> ModuleType:
    """Import ``training/<name>.py`` (a script folder, not a package) as a module."""
    path = TRAINING_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pasta_training_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(script: ModuleType, corpus: Path, out: Path, *extra: str) -> dict:
    """``training/pretrain.py`` on the tiny corpus with pasta_tiny; returns its train_results.json."""
    script.main(["--corpus", str(corpus), "--output-dir", str(out), *TINY, *extra])
    return json.loads((out / "train_results.json").read_text())
