"""Benchmark PASTA inference: whole-scan segmentation against MONAI, and report-generation speed.

In one run, on the real abdomen CT preprocessed to ``pasta_small``'s 1.5 mm grid:

* segmentation: wall time and memory of ``PastaImageProcessor.predict_segmentation`` with
  ``pasta_small`` (MONAI's windows and Gaussian weights, 64^3 windows, scores streamed slab by
  slab); baseline: MONAI's ``sliding_window_inference`` over a MONAI ``DynUNet`` of the same
  widths and depths (16-32-64-128-256, two 3x3x3 convolutions per stage, instance norm, leaky
  ReLU), same windows, overlap, batch and blending. A third row runs the PASTA model through
  MONAI's ``sliding_window_inference`` (same network, stock inferer). All produce argmax labels.
  Ratios are method / MONAI baseline (targets for PASTA: time <= 1.1, memory < 1).
* time: every method runs ``--repeats`` times in fresh child processes, interleaved in rotating
  order; the fastest run is reported (the machine may be shared).
* memory: "inference MB" is the child's peak resident set size during inference minus its
  resident size just before it (model, input and imports excluded), "peak MB" the child's peak.
* report generation: tokens per second of ``PastaForReportGeneration.generate`` (``pasta_small``,
  greedy, key/value cache) decoding a fixed number of tokens from the central 64^3 crop; the
  image encoding time is reported separately.

Weights are random (speed and memory do not depend on them).

    python benchmarks/inference.py --real-data ../shared/data/ct

Prints a table and writes JSON (default ``benchmarks/results/inference.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from modeling_pasta.image_processing_pasta import PastaImageProcessor  # noqa: E402
from modeling_pasta.modeling_pasta import PastaForReportGeneration, PastaForSegmentation  # noqa: E402
from modeling_pasta.variants import pasta_config  # noqa: E402

VARIANT = "pasta_small"
METHODS = ("pasta", "pasta_with_monai_inferer", "monai_dynunet")


def default_real_data() -> Path:
    env = os.environ.get("PASTA_REAL_DATA")
    return Path(env) / "ct" if env else REPO.parent / "shared" / "data" / "ct"


def resident_mb() -> float:
    """Current resident set size of this process (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def monai_dynunet(config) -> torch.nn.Module:
    """MONAI's nnU-Net-style U-Net with the widths and depths of ``config`` (plain encoder)."""
    from monai.networks.nets import DynUNet

    stages = len(config.hidden_sizes)
    return DynUNet(
        spatial_dims=3,
        in_channels=config.in_channels,
        out_channels=config.num_labels,
        kernel_size=[3] * stages,
        strides=[1] + [2] * (stages - 1),
        upsample_kernel_size=[2] * (stages - 1),
        filters=list(config.hidden_sizes),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"negative_slope": config.negative_slope, "inplace": True}),
        res_block=False,
    )


def segmentation_worker(method: str, inputs: Path, overlap: float, batch: int) -> dict:
    """One method in this (child) process: warm up, then time the whole-scan segmentation."""
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    config = pasta_config(VARIANT)
    pixel_values = torch.from_numpy(np.load(inputs))
    window = tuple(config.patch_size)
    if method == "pasta":
        model = PastaForSegmentation(config).eval()
        processor = PastaImageProcessor.from_model_config(
            config, sliding_window_overlap=overlap, sliding_window_batch_size=batch
        )

        def run() -> torch.Tensor:
            return processor.predict_segmentation(model, pixel_values)

    else:
        model = (
            PastaForSegmentation(config).eval()
            if method == "pasta_with_monai_inferer"
            else monai_dynunet(config).eval()
        )
        network = (lambda x: model(x).logits) if method == "pasta_with_monai_inferer" else model

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return sliding_window_inference(
                    pixel_values, window, batch, network, overlap=overlap, mode="gaussian"
                ).argmax(dim=1)

    with torch.inference_mode():
        model(torch.zeros(batch, config.in_channels, *window))  # warm-up: kernels, allocator
    before = resident_mb()
    start = time.perf_counter()
    labels = run()
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "seconds": seconds,
        "inference_mb": peak_mb() - before,
        "peak_mb": peak_mb(),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "labels_shape": list(labels.shape),
    }


def report_worker(inputs: Path, new_tokens: int) -> dict:
    torch.manual_seed(0)
    config = pasta_config(VARIANT)
    model = PastaForReportGeneration(config).eval()
    processor = PastaImageProcessor.from_model_config(config)
    crop = processor.crop(torch.from_numpy(np.load(inputs)))
    with torch.inference_mode():
        model.generate(pixel_values=crop, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        start = time.perf_counter()
        model.encode_image(crop)
        encode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ids = model.generate(pixel_values=crop, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        total_seconds = time.perf_counter() - start
    generated = ids.shape[1] - 1
    return {
        "method": "report_generation",
        "new_tokens": generated,
        "encode_seconds": encode_seconds,
        "generate_seconds": total_seconds,
        "tokens_per_second": generated / max(total_seconds - encode_seconds, 1e-9),
        "tokens_per_second_with_encoding": generated / total_seconds,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def run_child(arguments: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker {arguments} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-data", type=Path, default=default_real_data(), help="folder with abdomen_ct.nii.gz")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (both methods)")
    parser.add_argument("--batch", type=int, default=2, help="windows per forward pass (both methods)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded in the report benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (the fastest is reported)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "inference.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "report":
        print(json.dumps(report_worker(args.inputs, args.new_tokens)))
        return {}
    if args.worker:
        print(json.dumps(segmentation_worker(args.worker, args.inputs, args.overlap, args.batch)))
        return {}

    ct_path = args.real_data / "abdomen_ct.nii.gz"
    if not ct_path.is_file():
        raise SystemExit(f"{ct_path} not found; pass --real-data (the folder of ../shared/data/ct)")
    config = pasta_config(VARIANT)
    processor = PastaImageProcessor.from_model_config(config)
    start = time.perf_counter()
    inputs = processor(ct_path)
    preprocess_seconds = time.perf_counter() - start
    shape = list(inputs["pixel_values"].shape)
    with tempfile.TemporaryDirectory(prefix="pasta-bench-") as tmp:
        inputs_path = Path(tmp) / "pixel_values.npy"
        np.save(inputs_path, inputs["pixel_values"].numpy())
        common = ["--inputs", str(inputs_path), "--overlap", str(args.overlap), "--batch", str(args.batch)]
        runs: dict[str, list[dict]] = {m: [] for m in METHODS}
        for round_index in range(args.repeats):  # interleaved and rotated: a busy spell hits every method
            for k in range(len(METHODS)):
                method = METHODS[(round_index + k) % len(METHODS)]
                runs[method].append(run_child(["--worker", method, *common]))
        report = run_child(["--worker", "report", "--inputs", str(inputs_path), "--new-tokens", str(args.new_tokens)])

    segmentation = {}
    for method, results in runs.items():
        best = min(results, key=lambda r: r["seconds"])
        segmentation[method] = {**best, "all_seconds": [r["seconds"] for r in results]}
    baseline = segmentation["monai_dynunet"]
    for result in segmentation.values():
        result["time_ratio"] = result["seconds"] / baseline["seconds"]
        result["memory_ratio"] = result["inference_mb"] / baseline["inference_mb"]
    summary = {
        "variant": VARIANT,
        "input": str(ct_path),
        "model_grid": shape,
        "spacing_mm": list(config.target_spacing_mm),
        "window": list(config.patch_size),
        "overlap": args.overlap,
        "batch": args.batch,
        "preprocess_seconds": preprocess_seconds,
        "segmentation": segmentation,
        "report_generation": report,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
    }

    print(
        f"segmentation of {ct_path.name} on a {shape[2:]} grid at {config.target_spacing_mm[0]} mm "
        f"({VARIANT}, {config.patch_size[0]}^3 windows, overlap {args.overlap}, batch {args.batch}); "
        f"preprocessing {preprocess_seconds:.1f} s"
    )
    print(f"{'method':<26}{'params (M)':>11}{'time (s)':>10}{'ratio':>7}{'inference MB':>14}{'ratio':>7}{'peak MB':>9}")
    for name, result in segmentation.items():
        print(
            f"{name:<26}{result['parameters_m']:>11.2f}{result['seconds']:>10.1f}{result['time_ratio']:>7.2f}"
            f"{result['inference_mb']:>14.0f}{result['memory_ratio']:>7.2f}{result['peak_mb']:>9.0f}"
        )
    print(
        f"report generation ({report['parameters_m']:.1f} M parameters): {report['new_tokens']} tokens, "
        f"{report['tokens_per_second']:.1f} tokens/s decoding ({report['tokens_per_second_with_encoding']:.1f} "
        f"with the {report['encode_seconds'] * 1000:.0f} ms image encoding)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
