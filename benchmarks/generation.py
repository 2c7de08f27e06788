"""Benchmark PASTA-Gen: generation speed, streaming read rate and peak memory, with nibabel baselines.

In one run, on the real abdomen CT resampled to ``--spacing`` mm:

* generation: seconds per corpus sample (augmentation, lesion insertion, report measurement,
  text, Parquet encoding) in steady state, i.e. ``(T(N samples) - T(1 sample)) / (N - 1)``
  so one-off base loading and resampling are excluded; baseline: ``nib.load`` + ``nib.save``
  (``.nii.gz``) of the same CT volume. Ratio = generation / baseline (target <= 5).
* streaming read: samples per second of ``load_corpus(..., streaming=True)`` decoding CT, lesion
  mask and organ map to arrays; baseline: ``nib.load`` of the same three volumes per sample from
  ``.nii.gz`` files. Ratio = streaming rate / nibabel rate (target >= 1).
* peak memory: the process's peak resident set size (MB).

    python benchmarks/generation.py --real-data ../shared/data/ct --num-samples 6

Prints a table and writes JSON (default ``benchmarks/results/generation.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from datasets_pasta.bases import load_base, resample_base
from datasets_pasta.corpus import GenerationConfig, decode_sample, generate_corpus, load_corpus

REPO = Path(__file__).resolve().parents[1]
ABDOMEN = ("abdomen_ct.nii.gz", "abdomen_ct_organs.nii.gz", "organ_labels.json")
#: Types whose organ the real abdomen holds in useful amounts (it has no esophagus).
ABDOMEN_TYPES = [
    "liver_cancer", "liver_cyst", "kidney_cancer", "kidney_cyst", "kidney_stone", "pancreatic_cancer",
    "pancreatic_cyst", "gallbladder_cancer", "gallstone", "bladder_cancer", "gastric_cancer",
    "colorectal_cancer", "bone_metastasis", "lung_cancer",
]


def default_real_data() -> Path:
    env = os.environ.get("PASTA_REAL_DATA")
    return Path(env) / "ct" if env else REPO.parent / "shared" / "data" / "ct"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_generation(source: Path, out: Path, num_samples: int, spacing: float, seed: int) -> float:
    config = GenerationConfig(
        out_dir=out, num_samples=num_samples, seed=seed, sources=[str(source)], spacing_mm=spacing,
        lesion_types=ABDOMEN_TYPES, healthy_fraction=0.0, samples_per_shard=max(1, num_samples),
    )
    start = time.perf_counter()
    generate_corpus(config, progress=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-data", type=Path, default=default_real_data(), help="folder with abdomen_ct*.nii.gz")
    parser.add_argument("--num-samples", type=int, default=6, help="samples in the timed generation run (>= 2)")
    parser.add_argument("--spacing", type=float, default=1.5, help="voxel size in mm")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the nibabel baselines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "generation.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.num_samples < 2:
        parser.error("--num-samples must be >= 2")
    missing = [name for name in ABDOMEN if not (args.real_data / name).exists()]
    if missing:
        parser.error(f"{args.real_data}: missing {missing} (pass --real-data or set PASTA_REAL_DATA)")

    work = Path(tempfile.mkdtemp(prefix="pasta-bench-"))
    try:
        source = work / "bases"
        source.mkdir()
        for name in ABDOMEN:
            os.symlink(args.real_data / name, source / name)

        base = resample_base(load_base(source / ABDOMEN[0], source / ABDOMEN[1]), args.spacing)
        ct_path = work / "ct.nii.gz"
        nib.save(nib.Nifti1Image(base.ct_hu, base.affine), str(ct_path))
        baseline = []
        for i in range(args.repeats):
            start = time.perf_counter()
            image = nib.load(str(ct_path))
            array = np.asarray(image.dataobj)
            nib.save(nib.Nifti1Image(array, image.affine), str(work / f"copy{i}.nii.gz"))
            baseline.append(time.perf_counter() - start)
        nib_load_save = float(np.median(baseline))

        t_one = time_generation(source, work / "corpus1", 1, args.spacing, args.seed)
        t_many = time_generation(source, work / "corpusN", args.num_samples, args.spacing, args.seed)
        per_sample = (t_many - t_one) / (args.num_samples - 1)

        # Write the corpus's volumes as .nii.gz files for the nibabel baseline.
        corpus = work / "corpusN"
        count = 0
        files = []
        for row in load_corpus(str(corpus), split="train", streaming=True, decode=False):
            sample = decode_sample(row)
            _ = (sample.ct_hu.sum(), sample.lesion_mask.sum(), sample.organ_map.sum())
            stem = work / f"nii_{count}"
            for key, vol in (("ct", sample.ct_hu), ("mask", sample.lesion_mask), ("organs", sample.organ_map)):
                files.append(stem.with_name(f"{stem.name}_{key}.nii.gz"))
                nib.save(nib.Nifti1Image(vol, sample.affine), str(files[-1]))
            count += 1
        # Both timed passes read files that were just written (warm page cache for both).
        start = time.perf_counter()
        for row in load_corpus(str(corpus), split="train", streaming=True, decode=False):
            sample = decode_sample(row)
            _ = (sample.ct_hu.sum(), sample.lesion_mask.sum(), sample.organ_map.sum())
        stream_s = time.perf_counter() - start
        start = time.perf_counter()
        for path in files:
            _ = np.asarray(nib.load(str(path)).dataobj).sum()
        nib_read_s = time.perf_counter() - start
        stream_rate, nib_rate = count / stream_s, count / nib_read_s

        results = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "spacing_mm": args.spacing,
            "volume_shape": list(base.ct_hu.shape),
            "num_samples": args.num_samples,
            "generation_s_per_sample": round(per_sample, 3),
            "generation_first_sample_s": round(t_one, 3),
            "nibabel_load_save_s": round(nib_load_save, 3),
            "generation_ratio_vs_nibabel": round(per_sample / nib_load_save, 2),
            "streaming_samples_per_s": round(stream_rate, 2),
            "nibabel_read_samples_per_s": round(nib_rate, 2),
            "streaming_ratio_vs_nibabel": round(stream_rate / nib_rate, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "targets": {"generation_ratio_vs_nibabel": "<= 5", "streaming_ratio_vs_nibabel": ">= 1"},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("generation, s/sample (steady state)", results["generation_s_per_sample"]),
        ("nibabel load+save of the CT, s", results["nibabel_load_save_s"]),
        ("ratio generation / nibabel (target <= 5)", results["generation_ratio_vs_nibabel"]),
        ("streaming read, samples/s", results["streaming_samples_per_s"]),
        ("nibabel read of .nii.gz, samples/s", results["nibabel_read_samples_per_s"]),
        ("ratio streaming / nibabel (target >= 1)", results["streaming_ratio_vs_nibabel"]),
        ("peak RSS, MB", results["peak_rss_mb"]),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"PASTA-Gen benchmark at {args.spacing} mm, volume {tuple(results['volume_shape'])}, "
          f"{args.num_samples} samples")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>10}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
