"""training/pretrain.py: every stage trains, saves a loadable checkpoint, resumes; two processes split the data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from datasets_pasta.corpus import load_corpus
from modeling_pasta import PastaForClassification, PastaForReportGeneration, PastaForSegmentation
from modeling_pasta.image_processing_pasta import PastaImageProcessor

from training_testing import TINY, TRAINING_DIR, run

def test_segmentation_checkpoint_loads_with_its_processor_and_code(segmentation_run):
    model = PastaForSegmentation.from_pretrained(segmentation_run)
    processor = PastaImageProcessor.from_pretrained(segmentation_run)
    assert processor.target_spacing_mm == [10.0, 10.0, 10.0]
    assert model.config.target_spacing_mm == [10.0, 10.0, 10.0]
    assert (segmentation_run / "model.safetensors").is_file()
    assert (segmentation_run / "modeling_pasta.py").is_file()  # remote code beside the weights
    assert list(segmentation_run.glob("runs/**/events.out.tfevents.*")) or list(
        segmentation_run.glob("**/events.out.tfevents.*")
    ), "no TensorBoard log written"
    with torch.no_grad():
        logits = model(pixel_values=torch.zeros(1, 1, 16, 16, 16)).logits
    assert logits.shape == (1, model.config.num_labels, 16, 16, 16)


def test_interrupted_run_resumes_from_its_last_state(pretrain_script, segmentation_run, tiny_corpus, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(segmentation_run, out)
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["positions"][0][1] >= 1
    results = run(pretrain_script, tiny_corpus, out, "--stage", "segmentation", "--max-steps", "4", "--save-steps", "2")
    assert results["resumed_from_step"] == 2 and results["steps"] == 4
    assert results["train_samples"] == 8  # 2 x 2 before the interruption + 2 x 2 after
    assert not list((out / "checkpoints").glob(".step-*"))  # no half-written state left


def test_classification_stage_starts_from_the_segmentation_encoder(pretrain_script, segmentation_run, tiny_corpus, tmp_path):
    args = pretrain_script.build_parser().parse_args(
        ["--corpus", str(tiny_corpus), "--output-dir", str(tmp_path), "--stage", "classification", "--max-steps", "1",
         "--init-from", str(segmentation_run)]
    )
    config = pretrain_script.build_config(args, None)
    model = pretrain_script.build_model(args, config)
    segmentation = PastaForSegmentation.from_pretrained(segmentation_run)
    for name, value in segmentation.pasta.encoder.state_dict().items():
        torch.testing.assert_close(model.pasta.encoder.state_dict()[name], value)
    out = tmp_path / "classification"
    results = run(
        pretrain_script, tiny_corpus, out, "--stage", "classification", "--max-steps", "2", "--init-from",
        str(segmentation_run),
    )
    assert results["steps"] == 2
    model = PastaForClassification.from_pretrained(out)
    assert "lesion_type" in model.config.classification_tasks


def test_report_stage_trains_a_tokenizer_and_writes_text(pretrain_script, segmentation_run, tiny_corpus, tmp_path):
    out = tmp_path / "report"
    run(
        pretrain_script, tiny_corpus, out, "--stage", "report", "--max-steps", "2", "--init-from",
        str(segmentation_run), "--text-layers", "1", "--text-hidden-size", "32", "--vocab-size", "300",
        "--spacing-mm", "20", "20", "20",
    )
    from transformers import AutoTokenizer

    model = PastaForReportGeneration.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.text_config.vocab_size == len(tokenizer) <= 300
    assert model.config.target_spacing_mm == [20.0, 20.0, 20.0]
    ids = model.generate(pixel_values=torch.zeros(1, 1, 16, 16, 16), max_new_tokens=5, do_sample=False)
    assert isinstance(tokenizer.decode(ids[0], skip_special_tokens=True), str)


def test_masked_image_modelling_stage(pretrain_script, tiny_corpus, tmp_path):
    results = run(pretrain_script, tiny_corpus, tmp_path / "mim", "--stage", "mim", "--max-steps", "2", "--report-to", "none")
    assert results["steps"] == 2 and results["final_loss"] > 0


@pytest.mark.slow
def test_two_processes_train_on_disjoint_scans_and_the_result_loads(tiny_corpus, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        str(TRAINING_DIR / "pretrain.py"), "--corpus", str(tiny_corpus), "--output-dir", str(out), *TINY,
        "--stage", "segmentation", "--max-steps", "3", "--patches-per-scan", "1", "--shuffle-buffer", "1",
        "--report-to", "none",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "train_results.json").read_text())
    assert results["processes"] == 2 and results["train_samples"] == 12
    first, second = (set(cases) for cases in results["cases_per_process"])
    assert first and second and not first & second
    train_cases = {row["case_id"] for row in load_corpus(str(tiny_corpus), "train", decode=False)}
    assert first | second <= train_cases
    PastaForSegmentation.from_pretrained(out)
