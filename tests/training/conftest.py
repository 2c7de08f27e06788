"""Fixtures of the training tests: a tiny phantom corpus and tiny checkpoints of each stage."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import pytest
from training_testing import TINY_TYPES, load_script, run

from datasets_pasta.corpus import GenerationConfig, generate_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """8 train scans in 4 files (2 per file: whole files per process for 2 processes), 4 test scans; 10 mm."""
    out = tmp_path_factory.mktemp("training_corpus") / "corpus"
    config = GenerationConfig(
        out_dir=out,
        num_samples=12,
        seed=5,
        spacing_mm=10.0,
        lesion_types=TINY_TYPES,
        healthy_fraction=0.25,
        max_lesions=2,
        splits={"train": 2 / 3, "test": 1 / 3},
        samples_per_shard=2,
        phases=["venous", "plain"],
    )
    generate_corpus(config, progress=False)
    return out


@pytest.fixture(scope="session")
def pretrain_script() -> ModuleType:
    return load_script("pretrain")


@pytest.fixture(scope="session")
def segmentation_run(pretrain_script, tiny_corpus, tmp_path_factory) -> Path:
    """3 segmentation steps with a resumable state at step 2."""
    out = tmp_path_factory.mktemp("pretrain") / "segmentation"
    results = run(
        pretrain_script, tiny_corpus, out, "--stage", "segmentation", "--max-steps", "3", "--save-steps", "2",
        "--logging-steps", "1",
    )
    assert results["steps"] == 3 and results["train_samples"] == 6 and results["resumed_from_step"] is None
    return out


@pytest.fixture(scope="session")
def pipeline_dir(pretrain_script, tiny_corpus, segmentation_run, tmp_path_factory) -> Path:
    """A pipeline folder: the segmentation run plus classification and report stages started from it."""
    root = tmp_path_factory.mktemp("pipeline")
    for stage, extra in {
        "classification": [],
        "report": ["--text-layers", "1", "--text-hidden-size", "32", "--vocab-size", "300", "--spacing-mm", "20", "20", "20"],
    }.items():
        run(pretrain_script, tiny_corpus, root / stage, "--stage", stage, "--max-steps", "2", "--init-from",
            str(segmentation_run), "--report-to", "none", *extra)
    folder = root / "pasta"
    shutil.copytree(segmentation_run, folder / "segmentation", ignore=shutil.ignore_patterns("checkpoints", "runs"))
    shutil.copytree(root / "classification", folder / "classification", ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(root / "report", folder / "report_generation", ignore=shutil.ignore_patterns("checkpoints"))
    return folder
