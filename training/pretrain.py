#!/usr/bin/env python
"""Pretrain PASTA on a synthetic corpus with Accelerate: one CPU, one or many GPUs, many nodes.

Stages (one run each; a stage starts from the previous stage's checkpoint with ``--init-from``):

- ``mim`` (optional, 0): masked image modelling with zero-mean imputation, CT or PET/CT;
- ``segmentation`` (1): organ + lesion segmentation on lesion-rich random patches;
- ``classification`` (2): detection, phase, lesion type, malignancy and report attributes;
- ``report`` (2): the report text decoder on the whole scan at a coarse spacing.

Every process streams its own part of the corpus (``datasets.distributed.split_dataset_by_node``)
and decodes scans into patches itself; training is step-based, so all processes take the same
number of optimizer steps. The run saves ``save_pretrained`` checkpoints (safetensors weights,
config, processor, tokenizer and the modeling code for ``trust_remote_code``), keeps resumable
training states under ``OUTPUT/checkpoints/`` and resumes from the last one when restarted.

    accelerate launch training/pretrain.py --corpus out/corpus_train --stage segmentation \\
        --variant pasta_small --output-dir runs/segmentation --max-steps 2000
    accelerate launch --multi_gpu --num_processes 8 training/pretrain.py ...   # same code
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from datasets_pasta.corpus import load_corpus
from datasets_pasta.patches import (
    STAGES,
    CorpusPatchStream,
    batch_to_device,
    collate_examples,
    examples_for_stage,
    to_model_grid,
)
from modeling_pasta import (
    PastaForClassification,
    PastaForMaskedImageModeling,
    PastaForReportGeneration,
    PastaForSegmentation,
)
from modeling_pasta.configuration_pasta import PastaConfig
from modeling_pasta.image_processing_pasta import PastaImageProcessor
from modeling_pasta.tokenization_pasta import train_report_tokenizer
from modeling_pasta.variants import list_variants, pasta_config

logger = logging.getLogger("pasta.pretrain")

STAGE_MODELS = {
    "mim": PastaForMaskedImageModeling,
    "segmentation": PastaForSegmentation,
    "classification": PastaForClassification,
    "report": PastaForReportGeneration,
}
STATE_FILE = "trainer_state.json"
RESULTS_FILE = "train_results.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accelerate launch training/pretrain.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--corpus", required=True, help="corpus folder or Hub dataset repo id (pasta generate output)")
    data.add_argument("--split", default="train", help="corpus split to train on")
    data.add_argument("--patches-per-scan", type=int, default=4, help="patches drawn from each decoded scan")
    data.add_argument("--lesion-fraction", type=float, default=0.5, help="share of patches centred on a lesion")
    data.add_argument("--shuffle-buffer", type=int, default=16, help="patches mixed across scans before batching")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes per training process")
    model = parser.add_argument_group("model")
    model.add_argument("--stage", required=True, choices=STAGES, help="what to train")
    model.add_argument("--variant", default="pasta_small", choices=list_variants(), help="architecture for a new model")
    model.add_argument(
        "--init-from", default=None, help="checkpoint folder whose weights start this stage (e.g. the segmentation run)"
    )
    model.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="patch (voxels)")
    model.add_argument("--spacing-mm", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"), help="model voxel size")
    model.add_argument("--in-channels", type=int, choices=(1, 2), default=None, help="1 = CT, 2 = PET/CT")
    model.add_argument("--text-layers", type=int, default=None, help="report decoder layers (report stage)")
    model.add_argument("--text-hidden-size", type=int, default=None, help="report decoder width (report stage)")
    model.add_argument("--vocab-size", type=int, default=2048, help="report tokenizer vocabulary (when trained here)")
    model.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--max-steps", type=int, required=True, help="optimizer steps (per process, all in step)")
    optim.add_argument("--batch-size", type=int, default=2, help="patches per process and step")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--learning-rate", type=float, default=1e-3)
    optim.add_argument("--weight-decay", type=float, default=1e-5)
    optim.add_argument("--warmup-steps", type=int, default=50)
    optim.add_argument("--lr-scheduler", default="cosine", choices=("cosine", "linear", "constant_with_warmup"))
    optim.add_argument("--max-grad-norm", type=float, default=12.0)
    optim.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser, "final checkpoint, training states and logs")
    return parser


def add_run_arguments(parser: argparse.ArgumentParser, output_help: str) -> None:
    """The ``run`` options every Accelerate training script takes (output, states, logging)."""
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True, help=output_help)
    run.add_argument("--save-steps", type=int, default=200, help="save a resumable state every N steps")
    run.add_argument("--save-total-limit", type=int, default=2, help="resumable states kept")
    run.add_argument("--logging-steps", type=int, default=10)
    run.add_argument("--report-to", default="tensorboard", choices=("tensorboard", "none"), help="loss tracker")
    run.add_argument("--no-resume", action="store_true", help="ignore states in OUTPUT/checkpoints")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


# --------------------------------------------------------------------------------------------
# Model, processor, tokenizer
# --------------------------------------------------------------------------------------------


def build_config(args: argparse.Namespace, vocab_size: int | None) -> PastaConfig:
    config = (
        PastaConfig.from_pretrained(args.init_from) if args.init_from else pasta_config(args.variant)
    )
    if args.patch_size:
        config.patch_size = list(args.patch_size)
    if args.spacing_mm:
        config.target_spacing_mm = list(args.spacing_mm)
    if args.in_channels:
        config.in_channels = args.in_channels
    text = config.text_config
    if vocab_size is not None:
        text.vocab_size = int(vocab_size)
    if args.text_layers:
        text.num_hidden_layers = args.text_layers
    if args.text_hidden_size:
        text.hidden_size = args.text_hidden_size
        text.intermediate_size = 4 * args.text_hidden_size
    config.architectures = None
    config.validate_pasta_architecture()
    return config


def build_model(args: argparse.Namespace, config: PastaConfig) -> torch.nn.Module:
    model_class = STAGE_MODELS[args.stage]
    if args.init_from:
        # Weights with matching names (the encoder, the U-Net decoder) load; new heads start fresh.
        model = model_class.from_pretrained(args.init_from, config=config, ignore_mismatched_sizes=True)
    else:
        model = model_class(config)
    if getattr(model, "generation_config", None) is not None and args.stage == "report":
        # a whole report fits: saved with the checkpoint, so generate() does not stop at the library default
        model.generation_config.max_length = config.text_config.max_position_embeddings
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def report_tokenizer(args: argparse.Namespace, output_dir: Path, accelerator) -> Any:
    """The init checkpoint's tokenizer, or one trained (by the main process) on the split's report texts."""
    from transformers import PreTrainedTokenizerFast

    for folder in (output_dir / "tokenizer", Path(args.init_from) if args.init_from else None):
        if folder is not None and (folder / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(folder)
    if accelerator.is_main_process:
        texts = load_corpus(args.corpus, args.split, decode=False).select_columns(["report_text"])
        tokenizer = train_report_tokenizer((row["report_text"] for row in texts), vocab_size=args.vocab_size)
        tokenizer.save_pretrained(output_dir / "tokenizer")
        logger.info("trained a report tokenizer with %d tokens on split %r", len(tokenizer), args.split)
    accelerator.wait_for_everyone()
    return PreTrainedTokenizerFast.from_pretrained(output_dir / "tokenizer")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def build_stream(
    args: argparse.Namespace,
    config: PastaConfig,
    processor: PastaImageProcessor,
    tokenizer: Any,
    rank: int,
    world_size: int,
    start: tuple[int, int],
) -> CorpusPatchStream:
    corpus = load_corpus(args.corpus, args.split, decode=False, rank=rank, world_size=world_size)

    def rows(epoch: int):
        corpus.set_epoch(epoch)
        return corpus

    def make_examples(sample, rng):
        scan = to_model_grid(sample, processor, with_labels=args.stage != "report")
        return examples_for_stage(
            args.stage,
            scan,
            config,
            rng,
            patches_per_scan=args.patches_per_scan,
            lesion_fraction=args.lesion_fraction,
            tokenizer=tokenizer,
        )

    return CorpusPatchStream(
        rows, make_examples, seed=args.seed + 1000 * rank, shuffle_buffer=args.shuffle_buffer, start=start
    )


# --------------------------------------------------------------------------------------------
# Resumable states
# --------------------------------------------------------------------------------------------


def last_state(checkpoints: Path) -> Path | None:
    """The newest complete training state (one that has its ``trainer_state.json``)."""
    states = [p for p in checkpoints.glob("step-*") if (p / STATE_FILE).is_file()] if checkpoints.is_dir() else []
    return max(states, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_state(accelerator, checkpoints: Path, step: int, state: dict[str, Any], limit: int) -> None:
    """Write the state to a temporary folder, then rename it: an interrupted save leaves no partial state."""
    final = checkpoints / f"step-{step}"
    tmp = checkpoints / f".step-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        states = sorted(
            (p for p in checkpoints.glob("step-*") if (p / STATE_FILE).is_file()), key=lambda p: int(p.name[5:])
        )
        for old in states[:-limit] if limit > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run one stage; returns the summary also written to ``OUTPUT/train_results.json``."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import gather_object, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    output_dir = Path(args.output_dir)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=args.stage == "classification")]
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(output_dir),
        kwargs_handlers=handlers,
    )
    logging.basicConfig(
        level=args.log_level if accelerator.is_main_process else "WARNING",
        format=f"%(asctime)s %(levelname)s [rank {accelerator.process_index}] %(name)s: %(message)s",
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    tokenizer = report_tokenizer(args, output_dir, accelerator) if args.stage == "report" else None
    config = build_config(args, len(tokenizer) if tokenizer is not None else None)
    model = build_model(args, config)
    processor = PastaImageProcessor.from_model_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=args.max_steps
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    checkpoints = output_dir / "checkpoints"
    step, positions, seconds_before, samples_before = 0, None, 0.0, 0
    resume = None if args.no_resume else last_state(checkpoints)
    if resume is not None:
        accelerator.load_state(str(resume))
        saved = json.loads((resume / STATE_FILE).read_text())
        step, positions = saved["step"], saved["positions"]
        seconds_before, samples_before = saved["train_seconds"], saved["samples"]
        logger.info("resumed from %s (step %d)", resume, step)
    rank, world = accelerator.process_index, accelerator.num_processes
    start = tuple(positions[rank]) if positions else (0, 0)
    stream = build_stream(args, config, processor, tokenizer, rank, world, start)
    pad = config.text_config.pad_token_id
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=lambda examples: collate_examples(examples, pad),
        persistent_workers=args.num_workers > 0,
    )
    if accelerator.is_main_process:
        accelerator.init_trackers("pretrain", config={k: str(v) for k, v in vars(args).items()})
    logger.info(
        "stage %s: %s (%.2f M parameters), %d process(es), batch %d x %d accumulation, %d steps",
        args.stage,
        type(accelerator.unwrap_model(model)).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
        world,
        args.batch_size,
        args.gradient_accumulation_steps,
        args.max_steps,
    )

    model.train()
    position = list(start)
    cases_seen: set[str] = set()
    running, running_count, loss = 0.0, 0, math.nan
    samples = samples_before
    began = time.perf_counter()
    batches = iter(loader)
    bar = tqdm(
        total=args.max_steps, initial=step, desc=f"pretrain {args.stage}", disable=args.no_progress or not accelerator.is_local_main_process
    )
    while step < args.max_steps:
        for _ in range(args.gradient_accumulation_steps):
            batch = next(batches)
            with accelerator.accumulate(model):
                outputs = model(**batch_to_device(batch, accelerator.device))
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running += float(outputs.loss.detach())
            running_count += 1
            samples += len(batch["row"]) * world
            last = max(zip(batch["epoch"], batch["row"]))
            position = [last[0], last[1] + 1]
            cases_seen.update(batch["case_id"])
        step += 1
        bar.update(1)
        if step % args.logging_steps == 0 or step == args.max_steps:
            loss = accelerator.reduce(torch.tensor(running / running_count, device=accelerator.device), "mean").item()
            logs = {"loss": loss, "learning_rate": scheduler.get_last_lr()[0]}
            accelerator.log(logs, step=step)
            bar.set_postfix(loss=f"{loss:.4f}")
            logger.info("step %d: loss %.4f, lr %.2e", step, loss, logs["learning_rate"])
            running, running_count = 0.0, 0
        if step % args.save_steps == 0 and step < args.max_steps:
            elapsed = seconds_before + time.perf_counter() - began
            state = {
                "step": step,
                "positions": gather_object([position]),
                "train_seconds": elapsed,
                "samples": samples,
                "stage": args.stage,
            }
            save_state(accelerator, checkpoints, step, state, args.save_total_limit)
    bar.close()
    train_seconds = seconds_before + time.perf_counter() - began
    trained_now = samples - samples_before
    cases = gather_object([sorted(cases_seen)])
    accelerator.wait_for_everyone()
    summary = {
        "stage": args.stage,
        "steps": step,
        "processes": world,
        "train_samples": samples,
        "train_seconds": round(train_seconds, 2),
        "train_samples_per_second": round(trained_now / max(time.perf_counter() - began, 1e-9), 4),
        "final_loss": loss,
        "cases_per_process": cases,
        "resumed_from_step": int(resume.name.split("-")[1]) if resume is not None else None,
        "command": " ".join(sys.argv),
    }
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(output_dir, safe_serialization=True)
        processor.save_pretrained(output_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
        (output_dir / RESULTS_FILE).write_text(json.dumps(summary, indent=1))
        logger.info("saved %s to %s (%.1f samples/s)", type(unwrapped).__name__, output_dir, summary["train_samples_per_second"])
    accelerator.end_training()
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
