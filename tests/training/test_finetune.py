"""training/finetune.py: heads and weight transfer, fine-tuning modes, Trainer runs end to end, MRI transfer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from training_testing import load_script

from datasets_pasta.phantom import make_phantom
from modeling_pasta.image_io import save_nifti
from modeling_pasta.image_processing_pasta import PastaImageProcessor
from modeling_pasta.modeling_pasta import PastaForClassification, PastaForSegmentation, PastaForSurvival
from modeling_pasta.variants import pasta_config

AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
FAST = ["--no-progress", "--log-level", "WARNING", "--batch-size", "2", "--logging-steps", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny 3D convolutions run fastest on one thread (and do not fight a busy machine for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finetune():
    """``training/finetune.py`` as a module."""
    return load_script("finetune")


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """4 cases of 24^3 voxels (4 mm): a bright cube lesion (brighter when malignant) and its mask; a CSV."""
    root = tmp_path_factory.mktemp("finetune_cases")
    rng = np.random.default_rng(0)
    rows = ["image,mask,label,time,event"]
    for i in range(4):
        image = rng.normal(0.0, 20.0, (24, 24, 24)).astype(np.float32)
        mask = np.zeros(image.shape, np.uint8)
        corner = rng.integers(4, 14, 3)
        mask[tuple(slice(c, c + 6) for c in corner)] = 1
        image[mask > 0] += 100.0 + 60.0 * (i % 2)
        save_nifti(image, AFFINE, root / f"case{i}.nii.gz")
        save_nifti(mask, AFFINE, root / f"case{i}_seg.nii.gz")
        rows.append(f"case{i}.nii.gz,case{i}_seg.nii.gz,{('benign', 'malignant')[i % 2]},{10 + 5 * i},{i % 2}")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def lesion_checkpoint(tmp_path_factory) -> Path:
    """An (untrained) pasta_tiny lesion segmentation checkpoint: background + lesion."""
    torch.manual_seed(0)
    config = pasta_config("pasta_tiny", id2label={0: "background", 1: "lesion"}, segmentation_organs={})
    out = tmp_path_factory.mktemp("lesion_checkpoint")
    PastaForSegmentation(config).save_pretrained(out)
    return out


def state(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def results(output: Path) -> dict:
    return json.loads((output / "eval_results.json").read_text())


# --------------------------------------------------------------------------------------------
# Heads, weight transfer and fine-tuning modes
# --------------------------------------------------------------------------------------------


def test_encoder_weights_transfer_and_changed_heads_start_fresh(finetune, lesion_checkpoint, cases):
    checkpoint = PastaForSegmentation.from_pretrained(lesion_checkpoint)
    parser = finetune.build_parser()
    base = finetune.PastaConfig.from_pretrained(lesion_checkpoint)

    # same number of classes, other names: the head is re-initialised, the encoder and decoder load
    args = parser.parse_args(
        ["--model", str(lesion_checkpoint), "--data", str(cases), "--task", "segmentation", "--output-dir", "x"]
    )
    args.organs = "liver"
    config, mask_classes = finetune.build_config(args, base, [])
    assert config.id2label == {0: "background", 1: "liver"} and config.lesion_label is None and mask_classes
    model = finetune.build_model(args, base, config)
    assert same(state(model, "pasta."), state(checkpoint, "pasta."))
    assert not torch.equal(model.segmentation_head.weight, checkpoint.segmentation_head.weight)

    # same classes: the whole model loads
    args.organs = None
    config, _ = finetune.build_config(args, base, [])
    assert same(state(finetune.build_model(args, base, config), ""), state(checkpoint, ""))

    # another head type: the encoder loads (the checkpoint's decoder and head are not used)
    csv = str(cases / "cases.csv")
    argv = ["--model", str(lesion_checkpoint), "--csv", csv, "--task", "survival", "--output-dir", "-"]
    args = parser.parse_args(argv)
    config, _ = finetune.build_config(args, base, [])
    survival = finetune.build_model(args, base, config)
    assert same(state(survival, "pasta.encoder."), state(checkpoint, "pasta.encoder."))


def test_partial_mode_freezes_only_the_first_half_of_the_encoder(finetune):
    for name, frozen_stages in (("pasta_tiny", 1), ("pasta_small", 2)):
        with torch.device("meta"):
            model = PastaForSegmentation(pasta_config(name))
        counts = model.set_finetune_mode("partial")
        stages = model.pasta.encoder.stages
        assert all(not p.requires_grad for s in stages[:frozen_stages] for p in s.parameters())
        assert all(p.requires_grad for s in stages[frozen_stages:] for p in s.parameters())
        assert all(p.requires_grad for p in model.pasta.decoder.parameters())
        assert all(p.requires_grad for p in model.segmentation_head.parameters())
        assert counts["frozen"] == sum(p.numel() for s in stages[:frozen_stages] for p in s.parameters())
    with torch.device("meta"):
        model = PastaForClassification(pasta_config("pasta_tiny"))
    counts = model.set_finetune_mode("frozen")
    assert counts["frozen"] == sum(p.numel() for p in model.pasta.encoder.parameters())
    assert counts["trainable"] == sum(p.numel() for p in model.heads.parameters())


def test_frozen_mode_leaves_the_encoder_unchanged_and_trains_the_rest(finetune, lesion_checkpoint, cases, tmp_path):
    out = tmp_path / "frozen"
    argv = ["--model", str(lesion_checkpoint), "--data", str(cases), "--task", "segmentation", "--output-dir", str(out)]
    assert finetune.main([*argv, "--finetune-mode", "frozen", "--max-steps", "3", "--val-fraction", "0", *FAST]) == 0
    before = PastaForSegmentation.from_pretrained(lesion_checkpoint)
    after = PastaForSegmentation.from_pretrained(out)
    assert same(state(after, "pasta.encoder."), state(before, "pasta.encoder."))
    assert not same(state(after, "pasta.decoder."), state(before, "pasta.decoder."))
    assert not torch.equal(after.segmentation_head.weight, before.segmentation_head.weight)
    assert results(out)["parameters"]["frozen"] == sum(p.numel() for p in before.pasta.encoder.parameters())
    assert "eval" not in results(out)  # --val-fraction 0 and no --eval-data: nothing to evaluate


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def test_segmentation_from_scratch_saves_evaluates_and_resumes(finetune, cases, tmp_path):
    out = tmp_path / "seg"
    argv = ["--variant", "pasta_tiny", "--data", str(cases), "--task", "segmentation", "--output-dir", str(out)]
    assert finetune.main([*argv, "--max-steps", "2", "--save-steps", "2", "--val-fraction", "0.25", *FAST]) == 0
    first = results(out)
    assert first["steps"] == 2 and len(first["train_cases"]) == 3
    evaluation = first["eval"]
    assert evaluation["num_cases"] == 1 and set(evaluation["mean_dice"]) == {"lesion"}
    assert 0.0 <= evaluation["dice"] <= 1.0
    case_id = next(iter(evaluation["cases"]))
    assert set(evaluation["cases"][case_id]["lesion"]) == {"dice", "hd95_mm", "surface_dice"}
    model = PastaForSegmentation.from_pretrained(out)
    assert model.config.id2label == {0: "background", 1: "lesion"}
    assert PastaImageProcessor.from_pretrained(out).patch_size == [16, 16, 16]

    resume = ["--max-steps", "4", "--save-steps", "2", "--val-fraction", "0.25", "--resume"]
    assert finetune.main([*argv, *resume, *FAST]) == 0
    resumed = results(out)
    assert resumed["steps"] == 4 and resumed["resumed_from"].endswith("checkpoint-2")


def test_classification_from_a_csv(finetune, lesion_checkpoint, cases, tmp_path):
    out = tmp_path / "cls"
    argv = ["--model", str(lesion_checkpoint), "--csv", str(cases / "cases.csv"), "--task", "classification"]
    argv += ["--task-name", "malignancy", "--output-dir", str(out), "--max-steps", "3", "--val-fraction", "0.5"]
    assert finetune.main([*argv, "--finetune-mode", "partial", *FAST]) == 0
    evaluation = results(out)["eval"]
    assert evaluation["num_cases"] == 2
    assert {c["label"] for c in evaluation["cases"].values()} == {"benign", "malignant"}  # stratified split
    assert evaluation["accuracy"] in (0.0, 0.5, 1.0) and 0.0 <= evaluation["roc_auc"] <= 1.0
    model = PastaForClassification.from_pretrained(out)
    assert model.config.classification_tasks == {"malignancy": ["benign", "malignant"]}
    assert model.config.scan_level_tasks == []  # the cases have masks: a lesion-level task


def test_survival_from_a_csv(finetune, cases, tmp_path):
    out = tmp_path / "surv"
    csv = str(cases / "cases.csv")
    argv = ["--variant", "pasta_tiny", "--csv", csv, "--task", "survival", "--output-dir", str(out)]
    assert finetune.main([*argv, "--max-steps", "2", "--eval-data", csv, *FAST]) == 0
    evaluation = results(out)["eval"]
    assert evaluation["num_cases"] == 4 and 0.0 <= evaluation["c_index"] <= 1.0
    assert PastaForSurvival.from_pretrained(out).risk_head is not None


def test_options_that_do_not_fit_the_task_are_rejected(finetune, cases, tmp_path, capsys):
    argv = ["--variant", "pasta_tiny", "--data", str(cases), "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit):
        finetune.main([*argv, "--task", "segmentation", "--classes", "a,b"])
    assert "--classes is for --task classification" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        finetune.main([*argv, "--task", "survival", "--organs", "liver"])
    assert "--organs / --label-names are for --task segmentation" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Modality transfer: a CT-pretrained model fine-tuned on a real MRI
# --------------------------------------------------------------------------------------------


@pytest.mark.real_data
@pytest.mark.slow
def test_ct_model_fine_tuned_on_mri_organs(finetune, real_data, tmp_path):
    """pasta_tiny at 6 mm: organs learned on two CT phantoms, then fine-tuned on the abdominal MRI."""
    organs = "liver,spleen,kidney_left,kidney_right"
    common = ["--task", "segmentation", "--organs", organs, "--spacing-mm", "6", "6", "6"]
    common += ["--learning-rate", "3e-3", "--batch-size", "4", "--no-progress", "--log-level", "WARNING"]
    ct = tmp_path / "ct"
    ct.mkdir()
    for seed in (0, 1):
        base = make_phantom(spacing_mm=6.0, seed=seed, field_of_view_mm=(360.0, 270.0, 300.0))
        save_nifti(base.ct_hu, base.affine, ct / f"phantom{seed}.nii.gz")
        save_nifti(base.organ_map, base.affine, ct / f"phantom{seed}_organs.nii.gz")
    ct_model = tmp_path / "ct_model"
    ct_argv = ["--variant", "pasta_tiny", "--data", str(ct), "--output-dir", str(ct_model), "--val-fraction", "0"]
    assert finetune.main([*ct_argv, "--max-steps", "150", *common]) == 0

    mr = real_data / "mr"
    mr_argv = ["--model", str(ct_model), "--data", str(mr), "--eval-data", str(mr)]
    mr_argv += ["--label-names", str(mr / "organ_labels_mr.json"), *common]
    assert finetune.main([*mr_argv, "--output-dir", str(tmp_path / "untuned"), "--max-steps", "0"]) == 0
    assert finetune.main([*mr_argv, "--output-dir", str(tmp_path / "tuned"), "--max-steps", "500"]) == 0
    untuned, tuned = results(tmp_path / "untuned")["eval"], results(tmp_path / "tuned")["eval"]
    mask_classes = results(tmp_path / "tuned")["mask_classes"]
    assert mask_classes == {"1": "spleen", "2": "kidney_right", "3": "kidney_left", "5": "liver"}
    assert tuned["dice"] > untuned["dice"] + 0.15, (untuned["mean_dice"], tuned["mean_dice"])
    assert tuned["mean_dice"]["liver"] > 0.4 > untuned["mean_dice"]["liver"], (untuned["mean_dice"], tuned["mean_dice"])
    assert PastaForSegmentation.from_pretrained(tmp_path / "tuned").config.lesion_label is None
