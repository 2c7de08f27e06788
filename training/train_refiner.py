#!/usr/bin/env python
"""Train the FreeTumor-style lesion refiner against a segmentation discriminator, with Accelerate.

The refiner (:class:`modeling_pasta.PastaForLesionSynthesis`) adds a bounded residual inside each
candidate lesion of a PASTA-Gen corpus; the discriminator (:class:`modeling_pasta.PastaForSegmentation`,
classes background / organ / lesion) is trained at the same time (PASTA_SPEC.md, section 3):

- discriminator: segmentation loss (cross-entropy + Dice) on *real* lesion crops, plus
  ``--adversarial-weight`` (default 0.1) x the same loss on the refined crops with their lesion
  voxels labelled "organ" — it learns to tell synthetic from real lesion voxels;
- refiner: the discriminator's segmentation loss on the refined crops with the lesion labelled
  "lesion" (it wins when its lesions are segmented as lesions), plus small penalties on the
  residual as a fraction of the bound: its L1 size (``--residual-l1-weight``) and its total
  variation (``--residual-tv-weight``), which keeps the learned texture free of the
  checkerboard patterns a strided U-Net decoder otherwise adds under an adversarial loss.

The real side is a labeled tumor set when given (``--real-labeled``: a folder or CSV as for
fine-tuning, with ``--real-lesion-labels`` / ``--real-organ-labels``). Without one, procedural
lesions of the corpus (whole scans, alternating, disjoint from the candidates) stand in for real ones —
the log and ``train_results.json`` say so — and the refiner then learns lesions that the
discriminator segments confidently rather than the look of real tumors.

    accelerate launch training/train_refiner.py --corpus out/pasta-gen --output-dir runs/refiner --max-steps 600
    pasta generate --source phantom --out out/refined --num-samples 100 --refiner runs/refiner --quality-control

Resumable: states are saved under ``OUTPUT/checkpoints/`` and the run continues from the last one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain import RESULTS_FILE, STATE_FILE, add_run_arguments, last_state, save_state  # noqa: E402  (shared helpers)

from datasets_pasta.corpus import decode_sample, load_corpus  # noqa: E402
from datasets_pasta.synthesis import (  # noqa: E402
    LESION_CLASS,
    ORGAN_CLASS,
    corpus_lesion_crops,
    discriminator_config,
    discriminator_inputs,
    labeled_lesion_crops,
    stack_crops,
)
from modeling_pasta.modeling_pasta import PastaForLesionSynthesis, PastaForSegmentation  # noqa: E402
from modeling_pasta.variants import pasta_config  # noqa: E402

logger = logging.getLogger("pasta.train_refiner")
DISCRIMINATOR_DIR = "discriminator"
PROCEDURAL_REAL_SIDE = "procedural corpus lesions (no labeled tumor set given)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accelerate launch training/train_refiner.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--corpus", required=True, help="corpus folder or Hub dataset repo id (candidate lesions)")
    data.add_argument("--split", default="train", help="corpus split to read")
    data.add_argument("--max-scans", type=int, default=None, help="scans read into the crop bank (default: all)")
    data.add_argument("--real-labeled", default=None, help="labeled tumor set (folder or CSV) for the real side")
    data.add_argument("--real-lesion-labels", type=int, nargs="+", default=[2], help="mask ids of tumor (real set)")
    data.add_argument("--real-organ-labels", type=int, nargs="+", default=[1], help="mask ids of the host organ")
    data.add_argument("--crop-size", type=int, default=32, help="crop edge in voxels (the corpus's grid)")
    data.add_argument("--jitter", type=int, default=4, help="random shift of the crop centre (voxels)")
    model = parser.add_argument_group("model")
    model.add_argument("--hidden-sizes", type=int, nargs="+", default=[16, 32, 64], help="U-Net widths")
    model.add_argument("--residual-bound-hu", type=float, default=150.0, help="largest change per voxel (HU)")
    model.add_argument("--init-from", default=None, help="refiner folder to start from")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--max-steps", type=int, required=True, help="refiner + discriminator steps")
    optim.add_argument("--discriminator-warmup-steps", type=int, default=100, help="discriminator-only first steps")
    optim.add_argument("--batch-size", type=int, default=4, help="candidate and real crops per process and step")
    optim.add_argument("--learning-rate", type=float, default=2e-4)
    optim.add_argument("--adversarial-weight", type=float, default=0.1, help="discriminator term on refined lesions")
    optim.add_argument("--residual-l1-weight", type=float, default=0.05, help="L1 of residual / bound (refiner)")
    optim.add_argument("--residual-tv-weight", type=float, default=0.5, help="total variation of residual / bound")
    optim.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser, "refiner checkpoint, discriminator, states and logs")
    return parser


def crop_banks(args: argparse.Namespace, rank: int, world: int) -> tuple[list, list, str, float]:
    """This process's candidate and real crops, what the real side is, and the corpus spacing (mm)."""
    from tqdm.auto import tqdm

    size = (args.crop_size,) * 3
    rng = np.random.default_rng(args.seed + rank)
    rows = load_corpus(args.corpus, args.split, rank=rank, world_size=world, decode=False)
    candidates, procedural_real, spacing = [], [], None
    use_corpus_as_real = args.real_labeled is None
    for i, row in enumerate(tqdm(rows, desc="crop bank", unit="scan", disable=args.no_progress or rank)):
        if args.max_scans is not None and i >= args.max_scans:
            break
        sample = decode_sample(row)
        crops = corpus_lesion_crops(sample, size, rng, args.jitter)
        spacing = spacing or crops[0].spacing_mm if crops else spacing
        # without real tumors, whole scans alternate between the two sides (balanced by lesion count)
        (procedural_real if use_corpus_as_real and len(procedural_real) < len(candidates) else candidates).extend(crops)
    if not candidates:
        raise SystemExit(f"{args.corpus}:{args.split}: no lesions found; generate a corpus with lesions first")
    if use_corpus_as_real:
        if not procedural_real:
            raise SystemExit(
                f"{args.corpus}:{args.split}: process {rank} read {i + 1} scan(s), too few to split into "
                "candidate and real lesions; use a larger corpus (or --max-scans) or fewer processes"
            )
        return candidates, procedural_real, PROCEDURAL_REAL_SIDE, spacing
    from datasets_pasta.labeled import load_labeled_cases

    real = []
    for case in load_labeled_cases(args.real_labeled)[rank::world]:
        real.extend(labeled_lesion_crops(case, args.real_lesion_labels, args.real_organ_labels, spacing, size))
    if not real:
        raise SystemExit(f"{args.real_labeled}: no lesion with labels {args.real_lesion_labels} in its masks")
    return candidates, real, f"labeled tumors from {Path(args.real_labeled).name}", spacing


def build_refiner(args: argparse.Namespace, spacing_mm: tuple[float, ...]) -> PastaForLesionSynthesis:
    if args.init_from:
        return PastaForLesionSynthesis.from_pretrained(args.init_from)
    sizes = list(args.hidden_sizes)
    config = pasta_config(
        "pasta_tiny",
        hidden_sizes=sizes,
        depths=[2] * len(sizes),
        decoder_depths=[2] * (len(sizes) - 1),
        patch_size=[args.crop_size] * 3,
        target_spacing_mm=list(spacing_mm),
        synthesis_residual_bound_hu=args.residual_bound_hu,
    )
    return PastaForLesionSynthesis(config)


def batch_of(crops: list, rng: np.random.Generator, size: int, types: list[str], device) -> dict[str, torch.Tensor]:
    picked = [crops[i] for i in rng.integers(len(crops), size=size)]
    return {k: v.to(device) for k, v in stack_crops(picked, types).items()}


def total_variation(volume: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring voxels along each spatial axis of ``(B, C, x, y, z)``."""
    return sum(volume.diff(dim=axis).abs().mean() for axis in (2, 3, 4)) / 3


def lesion_share(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of lesion voxels the discriminator labels as lesion."""
    lesion = labels == LESION_CLASS
    return float((logits.argmax(1)[lesion] == LESION_CLASS).float().mean()) if bool(lesion.any()) else math.nan


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run the adversarial training; returns the summary also written to ``OUTPUT/train_results.json``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(log_with=None if args.report_to == "none" else args.report_to, project_dir=str(output_dir))
    logging.basicConfig(
        level=args.log_level if accelerator.is_main_process else "WARNING",
        format=f"%(asctime)s %(levelname)s [rank {accelerator.process_index}] %(name)s: %(message)s",
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    rank, world = accelerator.process_index, accelerator.num_processes

    candidates, real, real_side, spacing = crop_banks(args, rank, world)
    logger.info("%d candidate lesion crop(s); real side: %d crop(s) of %s", len(candidates), len(real), real_side)
    if real_side == PROCEDURAL_REAL_SIDE:
        logger.warning("no labeled tumor set: procedural lesions of the corpus serve as the real side")
    refiner = build_refiner(args, spacing)
    discriminator = PastaForSegmentation(discriminator_config(refiner.config))
    types = refiner.lesion_types
    bound = refiner.config.synthesis_residual_bound_hu
    betas = (0.5, 0.999)  # the usual GAN setting
    opt_g = torch.optim.Adam(refiner.parameters(), lr=args.learning_rate, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.learning_rate, betas=betas)
    refiner, discriminator, opt_g, opt_d = accelerator.prepare(refiner, discriminator, opt_g, opt_d)

    checkpoints = output_dir / "checkpoints"
    step, seconds_before = 0, 0.0
    resume = None if args.no_resume else last_state(checkpoints)
    if resume is not None:
        accelerator.load_state(str(resume))
        saved = json.loads((resume / STATE_FILE).read_text())
        step, seconds_before = saved["step"], saved["train_seconds"]
        logger.info("resumed from %s (step %d)", resume, step)
    rng = np.random.default_rng([args.seed, rank, step])  # a resumed run draws new batches
    if accelerator.is_main_process:
        accelerator.init_trackers("train_refiner", config={k: str(v) for k, v in vars(args).items()})
    logger.info(
        "refiner %.2f M / discriminator %.2f M parameters, %d process(es), batch %d, %d steps",
        sum(p.numel() for p in refiner.parameters()) / 1e6,
        sum(p.numel() for p in discriminator.parameters()) / 1e6,
        world,
        args.batch_size,
        args.max_steps,
    )
    d_config = accelerator.unwrap_model(discriminator).config
    refiner.train()
    discriminator.train()
    began = time.perf_counter()
    history: dict[str, list[float]] = {}
    logs: dict[str, float] = {}
    bar = tqdm(total=args.max_steps, initial=step, desc="train refiner", disable=args.no_progress or not accelerator.is_local_main_process)
    while step < args.max_steps:
        cand = batch_of(candidates, rng, args.batch_size, types, accelerator.device)
        real_batch = batch_of(real, rng, args.batch_size, types, accelerator.device)
        refined = refiner(cand["ct_hu"], cand["host_mask"], cand["blend_weight"], cand["lesion_type_ids"])
        adversarial = step >= args.discriminator_warmup_steps
        # Refiner: the discriminator should segment its lesions as lesions.
        if adversarial:
            fooled = discriminator(pixel_values=discriminator_inputs(refined.refined_hu, d_config), labels=cand["labels"])
            residual = refined.residual_hu / bound
            loss_g = (
                fooled.loss
                + args.residual_l1_weight * residual.abs().mean()
                + args.residual_tv_weight * total_variation(residual)
            )
            opt_g.zero_grad()
            accelerator.backward(loss_g)
            opt_g.step()
        # Discriminator: segment real lesions; call refined lesion voxels "organ".
        synthetic_labels = cand["labels"].masked_fill(cand["labels"] == LESION_CLASS, ORGAN_CLASS)
        on_real = discriminator(pixel_values=discriminator_inputs(real_batch["ct_hu"], d_config), labels=real_batch["labels"])
        on_synthetic = discriminator(
            pixel_values=discriminator_inputs(refined.refined_hu.detach(), d_config), labels=synthetic_labels
        )
        loss_d = on_real.loss + args.adversarial_weight * on_synthetic.loss
        opt_d.zero_grad()  # also drops what the refiner's backward left on the discriminator
        accelerator.backward(loss_d)
        opt_d.step()
        step += 1
        bar.update(1)
        values = {
            "loss_discriminator": float(loss_d.detach()),
            "loss_refiner": float(loss_g.detach()) if adversarial else math.nan,
            "real_lesion_found": lesion_share(on_real.logits.detach(), real_batch["labels"]),
            "synthetic_lesion_found": lesion_share(on_synthetic.logits.detach(), cand["labels"]),
            "residual_mean_abs_hu": float(refined.residual_hu.detach().abs().sum() / cand["blend_weight"].gt(0).sum().clamp_min(1)),
        }
        for key, value in values.items():
            history.setdefault(key, []).append(value)
        if step % args.logging_steps == 0 or step == args.max_steps:
            logs = {k: float(np.nanmean(v)) if not np.all(np.isnan(v)) else math.nan for k, v in history.items()}
            accelerator.log(logs, step=step)
            bar.set_postfix(d=f"{logs['loss_discriminator']:.3f}", g=f"{logs['loss_refiner']:.3f}")
            logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))
            history = {}
        if step % args.save_steps == 0 and step < args.max_steps:
            state = {"step": step, "train_seconds": seconds_before + time.perf_counter() - began}
            save_state(accelerator, checkpoints, step, state, args.save_total_limit)
    bar.close()
    accelerator.wait_for_everyone()
    summary = {
        "steps": step,
        "processes": world,
        "candidate_crops": len(candidates),
        "real_crops": len(real),
        "real_side": real_side,
        "spacing_mm": list(spacing),
        "train_seconds": round(seconds_before + time.perf_counter() - began, 2),
        "final_logs": logs,
        "resumed_from_step": int(resume.name.split("-")[1]) if resume is not None else None,
        "command": " ".join(sys.argv),
    }
    if accelerator.is_main_process:
        accelerator.unwrap_model(refiner).save_pretrained(output_dir, safe_serialization=True)
        accelerator.unwrap_model(discriminator).save_pretrained(output_dir / DISCRIMINATOR_DIR, safe_serialization=True)
        (output_dir / RESULTS_FILE).write_text(json.dumps(summary, indent=1))
        logger.info("saved the refiner to %s and the discriminator to %s/%s", output_dir, output_dir, DISCRIMINATOR_DIR)
    accelerator.end_training()
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
