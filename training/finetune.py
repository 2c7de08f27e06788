#!/usr/bin/env python
"""Fine-tune PASTA on a small labeled set with ``transformers.Trainer``: segmentation, classification, survival.

Data: ``--data FOLDER`` (NIfTI images ``<name>.nii.gz`` with masks ``<name>_seg.nii.gz``) or
``--csv FILE`` (columns ``image``, optional ``mask``, ``label`` for classification, ``time`` +
``event`` for survival); see :mod:`datasets_pasta.labeled`. Any modality the z-score intensity
scheme suits (CT, MRI) works. Validation cases come from ``--eval-data`` or are split off with
``--val-fraction``.

Model: ``--model DIR`` (a PASTA checkpoint: its encoder weights transfer, a head whose classes
change starts fresh) or ``--variant`` (from scratch). ``--finetune-mode`` few-shot levers:
``frozen`` (encoder fixed, heads and the U-Net decoder train), ``partial`` (the first half of the
encoder stages fixed), ``full``.

The run writes ``save_pretrained`` output (weights, config, modeling code, processor) to
``--output-dir``, Trainer checkpoints under it (``--resume`` continues from the last one), and
``eval_results.json``: Dice per class (segmentation, sliding windows on whole scans), accuracy
and ROC AUC (classification) or the C-index (survival) on the validation cases.

    python training/finetune.py --model runs/segmentation --data my_cases/ --task segmentation \\
        --output-dir runs/ft_lesion --max-steps 500 --finetune-mode partial
    python training/finetune.py --model runs/segmentation --data ../shared/data/mr --task segmentation \\
        --label-names ../shared/data/mr/organ_labels_mr.json --organs liver,spleen,kidney_left,kidney_right \\
        --eval-data ../shared/data/mr --output-dir runs/ft_mr_organs
    python training/finetune.py --model runs/classification --csv labels.csv --task classification \\
        --task-name malignancy --output-dir runs/ft_malignancy
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets_pasta.labeled import (
    TASKS,
    FinetuneDataset,
    LabeledCase,
    class_names_of,
    evaluate_labeled,
    load_labeled_cases,
    organ_segmentation_classes,
    split_cases,
)
from datasets_pasta.patches import collate_examples
from modeling_pasta.configuration_pasta import LESION_LABEL, PastaConfig
from modeling_pasta.image_processing_pasta import PastaImageProcessor
from modeling_pasta.modeling_pasta import (
    FINETUNE_MODES,
    PastaForClassification,
    PastaForSegmentation,
    PastaForSurvival,
    PastaPreTrainedModel,
)
from modeling_pasta.organs import load_label_names
from modeling_pasta.variants import list_variants, pasta_config

logger = logging.getLogger("pasta.finetune")

TASK_MODELS: dict[str, type[PastaPreTrainedModel]] = {
    "segmentation": PastaForSegmentation,
    "classification": PastaForClassification,
    "survival": PastaForSurvival,
}
RESULTS_FILE = "eval_results.json"
#: A folder's label-map description, as :mod:`datasets_pasta.bases` reads it.
FOLDER_LABEL_NAMES = "organ_labels.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python training/finetune.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="folder of <name>.nii.gz images with <name>_seg.nii.gz masks")
    source.add_argument("--csv", help="CSV of cases: image, mask, label, time, event, case_id")
    data.add_argument("--eval-data", default=None, help="validation cases (folder or .csv); else --val-fraction")
    data.add_argument("--val-fraction", type=float, default=0.2, help="share of the cases held out for validation")
    data.add_argument("--patches-per-epoch", type=int, default=None, help="training patches per epoch (16 per case)")
    data.add_argument(
        "--lesion-fraction", type=float, default=0.5, help="segmentation: foreground oversampling (see FinetuneDataset)"
    )
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    task = parser.add_argument_group("task")
    task.add_argument("--task", required=True, choices=TASKS)
    task.add_argument("--classes", default=None, help="classification: class names in order, comma separated")
    task.add_argument("--task-name", default="label", help="classification: name of the task (head)")
    task.add_argument(
        "--label-names",
        default=None,
        help="segmentation: JSON {\"id\": \"organ\"} of the label maps (default: the --data folder's "
        "organ_labels.json, else TotalSegmentator ids)",
    )
    task.add_argument(
        "--organs", default=None, help="segmentation: organs to segment, comma separated (else a binary lesion mask)"
    )
    model = parser.add_argument_group("model")
    init = model.add_mutually_exclusive_group(required=True)
    init.add_argument("--model", help="PASTA checkpoint folder to start from")
    init.add_argument("--variant", choices=list_variants(), help="architecture of a model trained from scratch")
    model.add_argument("--finetune-mode", default="full", choices=FINETUNE_MODES, help="which encoder stages train")
    model.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="patch (voxels)")
    model.add_argument("--spacing-mm", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"), help="voxel size")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--max-steps", type=int, default=500, help="optimizer steps (0: evaluate the starting model)")
    optim.add_argument("--batch-size", type=int, default=2, help="patches per step")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--learning-rate", type=float, default=1e-3)
    optim.add_argument("--weight-decay", type=float, default=1e-5)
    optim.add_argument("--warmup-steps", type=float, default=0.05, help="steps, or a fraction of --max-steps if < 1")
    optim.add_argument("--lr-scheduler", default="cosine", choices=("cosine", "linear", "constant_with_warmup"))
    optim.add_argument("--max-grad-norm", type=float, default=12.0)
    optim.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True, help="fine-tuned model, Trainer checkpoints, eval_results.json")
    run.add_argument("--save-steps", type=int, default=100, help="Trainer checkpoint every N steps")
    run.add_argument("--save-total-limit", type=int, default=2, help="Trainer checkpoints kept")
    run.add_argument("--logging-steps", type=int, default=10)
    run.add_argument("--report-to", default="none", help="Trainer loss trackers (none, tensorboard, ...)")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option combinations that do not fit the task, naming what to pass instead."""
    if args.task != "classification" and args.classes:
        parser.error("--classes is for --task classification")
    if args.task != "segmentation" and (args.organs or args.label_names):
        parser.error("--organs / --label-names are for --task segmentation")
    if args.label_names and not args.organs:
        parser.error("--label-names needs --organs (the organs to segment)")
    if args.max_steps < 0 or args.batch_size < 1:
        parser.error("--max-steps must be >= 0 and --batch-size >= 1")


# --------------------------------------------------------------------------------------------
# Cases, configuration, model
# --------------------------------------------------------------------------------------------


def load_cases(args: argparse.Namespace) -> tuple[list[LabeledCase], list[LabeledCase]]:
    """(training, validation) cases of the command line."""
    cases = load_labeled_cases(args.data or args.csv)
    if args.eval_data:
        return cases, load_labeled_cases(args.eval_data)
    return split_cases(cases, args.val_fraction, seed=args.seed)


def segmentation_classes(args: argparse.Namespace) -> tuple[dict[int, str], dict[int, int] | None]:
    """``(id2label, mask_classes)``: chosen organs of a label map, or background + lesion for binary masks."""
    if not args.organs:
        return {0: "background", 1: LESION_LABEL}, None
    names_file = args.label_names
    if names_file is None and args.data and (Path(args.data) / FOLDER_LABEL_NAMES).is_file():
        names_file = Path(args.data) / FOLDER_LABEL_NAMES
    organs = [o.strip() for o in args.organs.split(",") if o.strip()]
    return organ_segmentation_classes(load_label_names(names_file), organs)


def build_config(
    args: argparse.Namespace, base: PastaConfig, train_cases: list[LabeledCase]
) -> tuple[PastaConfig, dict[int, int] | None]:
    """The fine-tuned model's configuration (base + task head + grid overrides) and the mask mapping."""
    settings = base.to_dict()
    settings["architectures"] = None
    if args.patch_size:
        settings["patch_size"] = list(args.patch_size)
    if args.spacing_mm:
        settings["target_spacing_mm"] = list(args.spacing_mm)
    mask_classes = None
    if args.task == "segmentation":
        id2label, mask_classes = segmentation_classes(args)
        settings["id2label"] = id2label
        settings["lesion_label"] = LESION_LABEL if mask_classes is None else None
        settings["segmentation_organs"] = {name: [name] for i, name in id2label.items() if i and name != LESION_LABEL}
    elif args.task == "classification":
        previous = (base.classification_tasks or {}).get(args.task_name)
        if args.classes:
            classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        elif args.model and previous and {c.label for c in train_cases} <= set(previous):
            classes = list(previous)  # the checkpoint's head for this task fits: keep its classes (and weights)
        else:
            classes = class_names_of(train_cases)
        lesion_level = any(c.mask is not None for c in train_cases)
        settings["classification_tasks"] = {args.task_name: classes}
        settings["scan_level_tasks"] = [] if lesion_level else [args.task_name]
    config = PastaConfig.from_dict(settings)
    config.validate_pasta_architecture()
    return config, mask_classes


def changed_heads(task: str, base: PastaConfig, config: PastaConfig) -> list[str]:
    """Heads whose classes differ from the checkpoint's (a same-sized head would load stale weights)."""
    if task == "segmentation" and base.id2label != config.id2label:
        return ["segmentation_head"]
    if task == "classification":
        old = base.classification_tasks or {}
        return [f"heads.{t}" for t, classes in config.classification_tasks.items() if old.get(t) != classes]
    return []


def build_model(args: argparse.Namespace, base: PastaConfig, config: PastaConfig) -> PastaPreTrainedModel:
    """The task model: the checkpoint's weights where names and shapes match, new heads otherwise."""
    model_class = TASK_MODELS[args.task]
    if not args.model:
        return model_class(config)
    model = model_class.from_pretrained(args.model, config=config, ignore_mismatched_sizes=True)
    for name in changed_heads(args.task, base, config):
        for module in model.get_submodule(name).modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        logger.info("%s: classes changed, the head starts from a new initialisation", name)
    return model


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest Trainer checkpoint folder in ``output_dir``, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune, save and evaluate; returns the results also written to ``OUTPUT/eval_results.json``."""
    from transformers import set_seed

    output_dir = Path(args.output_dir)
    set_seed(args.seed)
    train_cases, eval_cases = load_cases(args)
    base = PastaConfig.from_pretrained(args.model) if args.model else pasta_config(args.variant)
    config, mask_classes = build_config(args, base, train_cases)
    processor = PastaImageProcessor.from_model_config(config)
    dataset_options = dict(
        mask_classes=mask_classes, classification_task=args.task_name if args.task == "classification" else None
    )
    train_set = FinetuneDataset(
        train_cases,
        processor,
        config,
        args.task,
        patches_per_epoch=args.patches_per_epoch,
        seed=args.seed,
        lesion_fraction=args.lesion_fraction,
        **dataset_options,
    )
    eval_set = FinetuneDataset(eval_cases, processor, config, args.task, **dataset_options) if eval_cases else None
    logger.info(
        "%s: %d training case(s), %d validation case(s), classes %s",
        args.task,
        len(train_cases),
        len(eval_cases),
        config.id2label if args.task == "segmentation" else config.classification_tasks.get(args.task_name, "-"),
    )
    model = build_model(args, base, config)
    parameter_counts = model.set_finetune_mode(args.finetune_mode)
    logger.info(
        "fine-tuning mode %s: %d trainable, %d frozen parameters",
        args.finetune_mode,
        parameter_counts["trainable"],
        parameter_counts["frozen"],
    )

    results: dict[str, Any] = {
        "task": args.task,
        "finetune_mode": args.finetune_mode,
        "init": args.model or args.variant,
        "train_cases": [c.case_id for c in train_cases],
        "parameters": parameter_counts,
    }
    if mask_classes is not None:
        results["mask_classes"] = {str(k): config.id2label[v] for k, v in sorted(mask_classes.items())}
    if args.max_steps > 0:
        results.update(train(args, model, processor, train_set))
    else:
        logger.info("--max-steps 0: no training, the starting model is saved and evaluated")
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        results.update(steps=0, train_loss=None, resumed_from=None)
    if eval_set is not None:
        results["eval"] = evaluate_labeled(model, eval_set)
        logger.info("evaluation on %d case(s): %s", len(eval_cases), summary(results["eval"]))
    else:
        logger.info("no validation cases: no evaluation (pass --eval-data or --val-fraction > 0)")
    (output_dir / RESULTS_FILE).write_text(json.dumps(_finite_or_none(results), indent=1))
    return results


def train(
    args: argparse.Namespace, model: PastaPreTrainedModel, processor: PastaImageProcessor, train_set: FinetuneDataset
) -> dict[str, Any]:
    """Train with ``transformers.Trainer`` (resuming when asked) and save model + processor to the output dir."""
    from transformers import Trainer, TrainingArguments

    output_dir = Path(args.output_dir)
    resume = last_checkpoint(output_dir) if args.resume else None
    if args.resume and resume is None:
        logger.info("--resume: no checkpoint in %s, starting from the beginning", output_dir)
    cuda = torch.cuda.is_available()
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type=args.lr_scheduler,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        logging_strategy="steps",
        logging_steps=args.logging_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        report_to=args.report_to,
        use_cpu=not cuda,
        remove_unused_columns=False,
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=cuda,
        disable_tqdm=args.no_progress,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        data_collator=collate_examples,
        processing_class=processor,
    )
    train_output = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(output_dir))  # save_pretrained of the model and the processor
    logger.info("saved the fine-tuned %s to %s", type(model).__name__, output_dir)
    return {"steps": train_output.global_step, "train_loss": train_output.training_loss, "resumed_from": resume}


def summary(evaluation: dict[str, Any]) -> str:
    """The headline numbers of an evaluation, for the log."""
    if evaluation["task"] == "segmentation":
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in evaluation["mean_dice"].items())
        return f"mean Dice {evaluation['dice']:.3f} ({per_class})"
    if evaluation["task"] == "classification":
        return f"accuracy {evaluation['accuracy']:.3f}, ROC AUC {evaluation['roc_auc']:.3f}"
    return f"C-index {evaluation['c_index']:.3f}"


def _finite_or_none(value: Any) -> Any:
    """``value`` for strict JSON: NaN (an undefined metric) becomes None, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = finetune(args)
    evaluation = results.get("eval")
    if evaluation is not None:
        print(f"{args.task}: {summary(evaluation)} on {evaluation['num_cases']} validation case(s)")
    print(f"fine-tuned model saved to {args.output_dir}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
