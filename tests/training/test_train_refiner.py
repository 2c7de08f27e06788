"""training/train_refiner.py: adversarial refiner training runs, saves loadable models, resumes, takes real tumors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from training_testing import load_script

from datasets_pasta.corpus import decode_sample, load_corpus
from datasets_pasta.synthesis import host_organ_mask
from modeling_pasta import PastaForLesionSynthesis, PastaForSegmentation

TINY_REFINER = ["--hidden-sizes", "4", "8", "--crop-size", "16", "--batch-size", "2", "--jitter", "1",
                "--report-to", "none", "--no-progress", "--discriminator-warmup-steps", "1"]


@pytest.fixture(scope="module")
def script():
    return load_script("train_refiner")


def test_training_saves_refiner_and_discriminator_and_resumes(script, tiny_corpus, tmp_path):
    out = tmp_path / "refiner"
    script.main(["--corpus", str(tiny_corpus), "--output-dir", str(out), "--max-steps", "3", "--save-steps", "2",
                 "--logging-steps", "1", *TINY_REFINER])
    results = json.loads((out / "train_results.json").read_text())
    assert results["steps"] == 3 and results["resumed_from_step"] is None
    assert results["real_side"].startswith("procedural corpus lesions")
    assert results["candidate_crops"] > 0 and results["real_crops"] > 0
    assert set(results["final_logs"]) >= {"loss_discriminator", "loss_refiner", "synthetic_lesion_found"}
    refiner = PastaForLesionSynthesis.from_pretrained(out)
    assert refiner.config.target_spacing_mm == [10.0, 10.0, 10.0]
    discriminator = PastaForSegmentation.from_pretrained(out / "discriminator")
    assert list(discriminator.config.id2label.values()) == ["background", "organ", "lesion"]
    script.main(["--corpus", str(tiny_corpus), "--output-dir", str(out), "--max-steps", "4", *TINY_REFINER])
    resumed = json.loads((out / "train_results.json").read_text())
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 4


def test_a_labeled_tumor_set_is_the_real_side(script, tiny_corpus, tmp_path):
    real = tmp_path / "tumors"
    real.mkdir()
    for row in load_corpus(str(tiny_corpus), "test", decode=False):
        sample = decode_sample(row)
        if not sample.report.lesions:
            continue
        lesion = sample.report.lesions[0]
        mask = np.where(host_organ_mask(sample.organ_map, lesion.type), 1, 0).astype(np.uint8)
        mask[sample.lesion_mask > 0] = 2
        nib.save(nib.Nifti1Image(sample.ct_hu, sample.affine), real / f"{sample.case_id}.nii.gz")
        nib.save(nib.Nifti1Image(mask, sample.affine), real / f"{sample.case_id}_seg.nii.gz")
    out = tmp_path / "refiner"
    script.main(["--corpus", str(tiny_corpus), "--output-dir", str(out), "--max-steps", "2", "--real-labeled",
                 str(real), "--real-lesion-labels", "2", "--real-organ-labels", "1", *TINY_REFINER])
    results = json.loads((out / "train_results.json").read_text())
    assert results["real_side"] == "labeled tumors from tumors" and results["real_crops"] >= 1


@pytest.mark.slow
def test_two_processes_train_the_refiner(tiny_corpus, tmp_path):
    import os
    import subprocess
    import sys

    from training_testing import TRAINING_DIR

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29519",
        str(TRAINING_DIR / "train_refiner.py"), "--corpus", str(tiny_corpus), "--output-dir", str(out),
        "--max-steps", "2", *TINY_REFINER,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "train_results.json").read_text())
    assert results["processes"] == 2 and results["steps"] == 2
    PastaForLesionSynthesis.from_pretrained(out)
