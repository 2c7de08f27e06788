"""Benchmark training throughput: ``training/pretrain.py`` against a plain PyTorch loop.

Both train the same model (``pasta_small``, segmentation stage, 48^3 patches at 2 mm, batch 2,
AdamW) on the same data: the same corpus, read and cut into patches by the same
:class:`datasets_pasta.patches.CorpusPatchStream` with the same seed. The plain loop is what a
user would write without Accelerate (``DataLoader``, forward, backward, gradient clipping,
``optimizer.step``, scheduler), so the ratio is the cost of what ``pretrain.py`` adds: Accelerate
wrapping, loss reduction and logging, progress, resumable-state bookkeeping.

Throughput = patches trained / wall time from the first batch request to the last optimizer
step (model building and the final save are excluded on both sides). The two run alternately,
``--repeats`` times each, in fresh child processes; the best run of each is reported, since the
machine may be shared. Target: ratio >= 0.9.

    python benchmarks/training.py --corpus out/corpus_train --steps 30

Without ``--corpus`` a small phantom corpus at 2 mm is generated in a temporary folder first.
Prints a table and writes JSON (default ``benchmarks/results/training.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "training" / "pretrain.py"
SETTINGS = {
    "variant": "pasta_small",
    "patch_size": [48, 48, 48],
    "spacing_mm": [2.0, 2.0, 2.0],
    "batch_size": 2,
    "patches_per_scan": 4,
    "learning_rate": 1e-3,
    "seed": 0,
}


def pretrain_command(corpus: str, out: Path, steps: int) -> list[str]:
    s = SETTINGS
    return [
        sys.executable, str(PRETRAIN), "--corpus", corpus, "--output-dir", str(out), "--stage", "segmentation",
        "--variant", s["variant"], "--patch-size", *map(str, s["patch_size"]), "--spacing-mm",
        *map(str, s["spacing_mm"]), "--batch-size", str(s["batch_size"]), "--patches-per-scan",
        str(s["patches_per_scan"]), "--learning-rate", str(s["learning_rate"]), "--seed", str(s["seed"]),
        "--max-steps", str(steps), "--save-steps", str(10 * steps), "--logging-steps", "10", "--report-to",
        "tensorboard", "--no-progress", "--log-level", "WARNING",
    ]


def run_pretrain(corpus: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        subprocess.run(pretrain_command(corpus, out, steps), check=True)
        return json.loads((out / "train_results.json").read_text())["train_samples_per_second"]


def plain_loop(corpus: str, steps: int) -> float:
    """The same training written by hand; returns patches per second."""
    import numpy as np
    import torch
    from transformers import get_scheduler

    from datasets_pasta.corpus import load_corpus
    from datasets_pasta.patches import CorpusPatchStream, collate_examples, examples_for_stage, to_model_grid
    from modeling_pasta import PastaForSegmentation
    from modeling_pasta.image_processing_pasta import PastaImageProcessor
    from modeling_pasta.variants import pasta_config

    s = SETTINGS
    torch.manual_seed(s["seed"])
    np.random.seed(s["seed"])
    config = pasta_config(s["variant"], patch_size=s["patch_size"], target_spacing_mm=s["spacing_mm"])
    model = PastaForSegmentation(config)
    processor = PastaImageProcessor.from_model_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["learning_rate"], weight_decay=1e-5)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=50, num_training_steps=steps)
    rows = load_corpus(corpus, "train", decode=False, rank=0, world_size=1)

    def make(sample, rng):
        scan = to_model_grid(sample, processor)
        return examples_for_stage("segmentation", scan, config, rng, patches_per_scan=s["patches_per_scan"], lesion_fraction=0.5)

    def epoch_rows(epoch):
        rows.set_epoch(epoch)
        return rows

    stream = CorpusPatchStream(epoch_rows, make, seed=s["seed"], shuffle_buffer=16)
    loader = torch.utils.data.DataLoader(stream, batch_size=s["batch_size"], collate_fn=collate_examples)
    model.train()
    began = time.perf_counter()
    samples = 0
    for step, batch in zip(range(steps), loader):
        outputs = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        samples += len(batch["row"])
    return samples / (time.perf_counter() - began)


def run_plain(corpus: str, steps: int) -> float:
    result = subprocess.run(
        [sys.executable, __file__, "--child-plain", "--corpus", corpus, "--steps", str(steps)],
        check=True, capture_output=True, text=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def small_corpus(folder: Path) -> str:
    from datasets_pasta.corpus import GenerationConfig, generate_corpus

    config = GenerationConfig(out_dir=folder, num_samples=8, seed=0, spacing_mm=2.0, samples_per_shard=4, phases=["venous"])
    generate_corpus(config, progress=False)
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=None, help="corpus folder with a train split (default: a small phantom corpus)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each method (best reported)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "training.json"))
    parser.add_argument("--child-plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_plain:
        sys.stdout.write(f"{plain_loop(args.corpus, args.steps)}\n")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus or small_corpus(Path(tmp) / "corpus")
        runs: dict[str, list[float]] = {"pretrain.py": [], "plain PyTorch loop": []}
        for _ in range(args.repeats):
            runs["pretrain.py"].append(run_pretrain(corpus, args.steps))
            runs["plain PyTorch loop"].append(run_plain(corpus, args.steps))
    best = {name: max(values) for name, values in runs.items()}
    ratio = best["pretrain.py"] / best["plain PyTorch loop"]
    results = {
        "settings": {**SETTINGS, "steps": args.steps, "repeats": args.repeats, "corpus": args.corpus or "phantom (8 scans)"},
        "samples_per_second": {name: [round(v, 4) for v in values] for name, values in runs.items()},
        "best_samples_per_second": {name: round(v, 4) for name, v in best.items()},
        "ratio_pretrain_vs_plain": round(ratio, 3),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
    }
    import torch

    results["machine"]["torch"] = torch.__version__
    results["machine"]["threads"] = torch.get_num_threads()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    lines = ["| method | patches/s (best) | runs |", "| --- | ---: | --- |"]
    for name, values in runs.items():
        lines.append(f"| {name} | {best[name]:.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    lines.append(f"\nratio pretrain.py / plain loop: {ratio:.3f} (target >= 0.9)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
