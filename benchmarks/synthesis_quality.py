"""Benchmark learned lesion synthesis: procedural vs refined vs refined + quality control, side by side.

One run generates, on the same held-out phantom patients and with the same seeds, one lesion per
scan for every requested type in each arm:

* ``procedural``: PASTA-Gen's lesion models alone;
* ``refined``: the same lesions (same seeds, same shapes) after the refiner (``--refiner``);
* ``refined+QC``: refined lesions kept only when the QC segmenter (``--qc-model``) labels at
  least ``--qc-threshold`` of their voxels as lesion, rejected ones drawn again;
* ``reference``: the "real" side. Without a labeled tumor set (``--reference-labeled``), the
  reference is procedural lesions drawn with other seeds — this machine has no real tumors — so
  the realism classifier then measures how far an arm moved away from the procedural model.

and reports, per arm:

* QC pass rate: share of lesions the segmenter finds (>= threshold of voxels), for the shipped
  ``pasta-small`` segmenter and for the QC model of the refined+QC arm, also at 30 % and 50 %;
* per type: lesion-minus-organ mean HU (contrast), lesion and organ standard deviation (HU) and
  texture (standard deviation of the high-pass image, HU), organ measured in a 10 mm ring around
  the lesion;
* realism: how well the arm's lesions can be told from the reference lesions (0.5 =
  indistinguishable): held-out accuracy of a small 3D CNN on lesion crops (mean over
  ``--classifier-repeats`` random splits), and 5-fold accuracy of a logistic regression on the
  intensity and texture statistics above (the reference's own are measured the same way);
* downstream: a small segmenter (background / organ / lesion) trained on each arm's crops, its
  lesion Dice on the held-out crops of every arm (rows: trained on, columns: scored on).

    python benchmarks/synthesis_quality.py --refiner runs/refiner-v1 --lesions-per-type 4

Prints tables, writes JSON (default ``benchmarks/results/synthesis_quality.json``) and a gallery of
procedural vs refined lesions (default ``docs/refined_lesions.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from datasets_pasta.phantom import make_phantom
from datasets_pasta.sample import generate_sample
from datasets_pasta.synthesis import (
    LesionQualityControl,
    LesionRefiner,
    LesionSynthesis,
    QualityControlError,
    corpus_lesion_crops,
    discriminator_config,
    discriminator_inputs,
    host_organ_mask,
    labeled_lesion_crops,
    stack_crops,
)
from modeling_pasta.metrics import accuracy, dice_score
from modeling_pasta.modeling_pasta import PastaForSegmentation
from modeling_pasta.report import LESION_TYPES

REPO = Path(__file__).resolve().parents[1]
ARMS = ("procedural", "refined", "refined+QC")
PHASES = ("venous", "arterial", "plain")
logger = logging.getLogger("pasta.benchmarks.synthesis_quality")


# --------------------------------------------------------------------------------------------
# Lesion statistics
# --------------------------------------------------------------------------------------------


def lesion_statistics(sample, ring_mm: float = 10.0) -> dict[str, float]:
    """Intensity and texture of lesion 1 and of its host organ in a ring around it (HU)."""
    ct = sample.ct_hu.astype(np.float32)
    lesion = sample.lesion_mask == 1
    lesion_type = sample.report.lesions[0].type
    spacing = np.asarray(sample.spacing_mm)
    distance = ndimage.distance_transform_edt(~lesion, sampling=spacing)
    organ = host_organ_mask(sample.organ_map, lesion_type) & ~lesion & (distance <= ring_mm)
    highpass = ct - ndimage.gaussian_filter(ct, sigma=2.0 / spacing)
    stats = {
        "lesion_hu": float(ct[lesion].mean()),
        "lesion_sd_hu": float(ct[lesion].std()),
        "lesion_texture_hu": float(highpass[lesion].std()),
    }
    if organ.sum() >= 10:
        stats.update(
            organ_hu=float(ct[organ].mean()),
            organ_sd_hu=float(ct[organ].std()),
            organ_texture_hu=float(highpass[organ].std()),
            contrast_hu=stats["lesion_hu"] - float(ct[organ].mean()),
        )
    return stats


STAT_FEATURES = ("contrast_hu", "lesion_sd_hu", "lesion_texture_hu", "organ_sd_hu", "organ_texture_hu")


def feature_accuracy(reference: list[dict], synthetic: list[dict], seed: int) -> float | None:
    """5-fold accuracy of a logistic regression telling the two sets apart from their statistics."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def rows(records):
        return [[r[k] for k in STAT_FEATURES] for r in records if all(k in r for k in STAT_FEATURES)]

    x_ref, x_syn = rows(reference), rows(synthetic)
    n = min(len(x_ref), len(x_syn))
    if n < 5:
        return None
    x = np.array(x_ref[:n] + x_syn[:n])
    y = np.array([0] * n + [1] * n)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return round(float(cross_val_score(make_pipeline(StandardScaler(), LogisticRegression()), x, y, cv=folds).mean()), 3)


def mean_of(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if key in r]
    return round(float(np.mean(values)), 2) if values else None


# --------------------------------------------------------------------------------------------
# Small networks trained on crops
# --------------------------------------------------------------------------------------------


class CropClassifier(torch.nn.Module):
    """A small 3D CNN on (CT, lesion mask) crops: real (0) or synthetic (1)."""

    def __init__(self, width: int = 8):
        super().__init__()
        layers, channels = [], 2
        for out in (width, 2 * width, 4 * width):
            layers += [torch.nn.Conv3d(channels, out, 3, padding=1), torch.nn.InstanceNorm3d(out, affine=True),
                       torch.nn.LeakyReLU(0.01), torch.nn.MaxPool3d(2)]
            channels = out
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


def classifier_inputs(crops, config) -> torch.Tensor:
    batch = stack_crops(crops, ["none"])
    return torch.cat([discriminator_inputs(batch["ct_hu"], config), (batch["labels"] == 2).float()[:, None]], 1)


def realism_accuracy(real, synthetic, config, steps: int, repeats: int, seed: int) -> float:
    """Held-out accuracy of a real-vs-synthetic crop classifier (mean over random 70/30 splits)."""
    n = min(len(real), len(synthetic))
    accuracies = []
    for repeat in range(repeats):
        rng = np.random.default_rng([seed, repeat])
        torch.manual_seed(seed + repeat)
        r = [real[i] for i in rng.permutation(len(real))[:n]]
        s = [synthetic[i] for i in rng.permutation(len(synthetic))[:n]]
        cut = int(0.7 * n)
        x_train = classifier_inputs(r[:cut] + s[:cut], config)
        y_train = torch.tensor([0] * cut + [1] * cut)
        x_test = classifier_inputs(r[cut:] + s[cut:], config)
        y_test = torch.tensor([0] * (n - cut) + [1] * (n - cut))
        model = CropClassifier()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = torch.from_numpy(rng.integers(len(x_train), size=8))
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracies.append(accuracy(model.eval()(x_test).argmax(1).numpy(), y_test.numpy()))
    return round(float(np.mean(accuracies)), 3)


def train_segmenter(crops, config, steps: int, seed: int) -> PastaForSegmentation:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PastaForSegmentation(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        batch = stack_crops([crops[i] for i in rng.integers(len(crops), size=4)], ["none"])
        loss = model(pixel_values=discriminator_inputs(batch["ct_hu"], config), labels=batch["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def lesion_dice(model, crops, config) -> float:
    batch = stack_crops(crops, ["none"])
    with torch.no_grad():
        predicted = model(pixel_values=discriminator_inputs(batch["ct_hu"], config)).logits.argmax(1) == 2
    truth = batch["labels"] == 2
    return round(float(np.mean([dice_score(p.numpy(), t.numpy()) for p, t in zip(predicted, truth)])), 3)


# --------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------


def render_gallery(pairs: list[tuple], path: Path) -> None:
    """Procedural (top) and refined (middle) lesion of the same seed, and their difference (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from datasets_pasta.gallery import lesion_panel
    from datasets_pasta.views import radiological_axial

    fig, axes = plt.subplots(3, len(pairs), figsize=(2.3 * len(pairs), 7.2), squeeze=False)
    for col, (procedural, refined) in enumerate(pairs):
        name = LESION_TYPES[procedural.report.lesions[0].type].readable
        lesion_panel(axes[0, col], procedural, crop_mm=80.0, title=f"{name}\nprocedural")
        lesion_panel(axes[1, col], refined, crop_mm=80.0, title="refined")
        mask = procedural.lesion_mask == 1
        z = int(np.argmax(mask.sum(axis=(0, 1))))
        diff = radiological_axial(refined.ct_hu.astype(np.float32) - procedural.ct_hu, z)
        rows, cols = np.nonzero(radiological_axial(mask, z))
        half = int(40.0 / procedural.spacing_mm[0])
        r0, c0 = max(int(rows.mean()) - half, 0), max(int(cols.mean()) - half, 0)
        image = axes[2, col].imshow(diff[r0:r0 + 2 * half, c0:c0 + 2 * half], cmap="RdBu_r", vmin=-60, vmax=60)
        axes[2, col].set_title("refined - procedural", fontsize=8)
        axes[2, col].set_axis_off()
    fig.colorbar(image, ax=axes[2, :].tolist(), shrink=0.8, label="HU")
    fig.suptitle("PASTA-Gen lesions before and after the learned refiner (same seed, same shape)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--refiner", type=Path, required=True, help="trained refiner folder")
    parser.add_argument("--qc-model", type=Path, default=None,
                        help="QC segmenter of the refined+QC arm (default: the refiner's discriminator)")
    parser.add_argument("--qc-threshold", type=float, default=0.7)
    parser.add_argument("--qc-max-attempts", type=int, default=4)
    parser.add_argument("--lesion-types", default=",".join(LESION_TYPES), help="comma-separated")
    parser.add_argument("--lesions-per-type", type=int, default=4)
    parser.add_argument("--spacing", type=float, default=2.0, help="mm")
    parser.add_argument("--phantom-seed", type=int, default=300, help="first held-out phantom patient")
    parser.add_argument("--crop-size", type=int, default=32)
    parser.add_argument("--reference-labeled", type=Path, default=None, help="labeled real tumors (folder or CSV)")
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--classifier-repeats", type=int, default=3)
    parser.add_argument("--segmenter-steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "synthesis_quality.json")
    parser.add_argument("--gallery", type=Path, default=REPO / "docs" / "refined_lesions.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()

    refiner = LesionRefiner.from_pretrained(args.refiner)
    qc_path = args.qc_model or args.refiner / "discriminator"
    qc = LesionQualityControl.from_pretrained(qc_path, threshold=args.qc_threshold, max_attempts=args.qc_max_attempts)
    shipped = LesionQualityControl.from_pretrained(None, threshold=args.qc_threshold)
    types = [t for t in args.lesion_types.split(",") if t]
    bases = [make_phantom(spacing_mm=args.spacing, seed=args.phantom_seed + k, phase=phase)
             for k, phase in enumerate(PHASES)]
    synthesis = {
        "procedural": None,
        "refined": LesionSynthesis(refiner=refiner),
        "refined+QC": LesionSynthesis(refiner=refiner, quality_control=qc),
    }
    size = (args.crop_size,) * 3
    crops: dict[str, list] = {arm: [] for arm in (*ARMS, "reference")}
    stats: dict[str, dict[str, list]] = {arm: {t: [] for t in types} for arm in ARMS}
    qc_checks: dict[str, dict[str, list[float]]] = {arm: {"shipped": [], "qc_model": []} for arm in ARMS}
    qc_records: list[dict] = []
    reference_stats: list[dict] = []
    gallery: dict[str, tuple] = {}
    timings = {arm: 0.0 for arm in ARMS}
    for t_index, lesion_type in enumerate(types):
        for i in range(args.lesions_per_type):
            base = bases[i % len(bases)]
            seed = args.seed * 1_000_003 + t_index * 1000 + i
            samples = {}
            for arm in ARMS:
                began = time.perf_counter()
                try:
                    samples[arm] = generate_sample(base, [lesion_type], seed=seed, case_id=f"{arm}-{seed}",
                                                   synthesis=synthesis[arm])
                except QualityControlError as err:
                    qc_records.extend(err.records)
                    logger.info("%s %d: no lesion passed QC in %d attempts", lesion_type, i, args.qc_max_attempts)
                timings[arm] += time.perf_counter() - began
            if "refined+QC" in samples:
                qc_records.extend(samples["refined+QC"].synthesis_log)
            reference = generate_sample(base, [lesion_type], seed=seed + 500_000, case_id=f"ref-{seed}")
            if args.reference_labeled is None:
                crops["reference"].extend(corpus_lesion_crops(reference, size))
                reference_stats.append(lesion_statistics(reference))
            for arm, sample in samples.items():
                crops[arm].extend(corpus_lesion_crops(sample, size))
                stats[arm][lesion_type].append(lesion_statistics(sample))
                if arm != "refined+QC":  # that arm passed its QC by construction; its rate is below
                    mask = sample.lesion_mask == 1
                    qc_checks[arm]["qc_model"].append(qc.detected_fraction(sample.ct_hu, sample.affine, mask))
                qc_checks[arm]["shipped"].append(
                    shipped.detected_fraction(sample.ct_hu, sample.affine, sample.lesion_mask == 1)
                )
            if i == 0 and "procedural" in samples:
                gallery[lesion_type] = (samples["procedural"], samples["refined"])
        logger.info("%s: done (%d/%d types)", lesion_type, t_index + 1, len(types))

    if args.reference_labeled is not None:
        from datasets_pasta.labeled import load_labeled_cases

        for case in load_labeled_cases(args.reference_labeled):
            crops["reference"].extend(labeled_lesion_crops(case, [2], [1], (args.spacing,) * 3, size))
    config = discriminator_config(refiner.model.config, hidden_sizes=[8, 16, 32])
    config.patch_size = list(size)

    results: dict = {
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "command": "python benchmarks/synthesis_quality.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k not in ("json", "gallery")
        ),
        "reference": "labeled tumors" if args.reference_labeled else "procedural lesions, other seeds (no real tumors here)",
        "refiner": str(args.refiner),
        "qc_model": str(qc_path),
        "qc_threshold": args.qc_threshold,
        "arms": {},
    }
    checked = [f for r in qc_records for f in r["detected_fractions"]]
    for arm in ARMS:
        fractions = qc_checks[arm]
        arm_stats = [s for per_type in stats[arm].values() for s in per_type]
        results["arms"][arm] = {
            "lesions": len(arm_stats),
            "seconds_per_lesion": round(timings[arm] / max(1, len(types) * args.lesions_per_type), 3),
            "qc_pass_rate_shipped": round(float(np.mean([f >= args.qc_threshold for f in fractions["shipped"]])), 3),
            "mean_detected_fraction_shipped": round(float(np.mean(fractions["shipped"])), 3),
            "qc_pass_rate_qc_model": round(
                float(np.mean([f >= args.qc_threshold for f in (fractions["qc_model"] or checked)])), 3
            ),
            "qc_pass_rate_at": {
                f"{t:g}": {
                    "shipped": round(float(np.mean([f >= t for f in fractions["shipped"]])), 3),
                    "qc_model": round(float(np.mean([f >= t for f in (fractions["qc_model"] or checked)])), 3),
                }
                for t in (0.3, 0.5, args.qc_threshold)
            },
            "feature_realism_accuracy": feature_accuracy(reference_stats, arm_stats, args.seed),
            "mean_contrast_hu": mean_of(arm_stats, "contrast_hu"),
            "per_type": {
                t: {k: mean_of(v, k) for k in ("contrast_hu", "lesion_sd_hu", "organ_sd_hu", "lesion_texture_hu",
                                              "organ_texture_hu")}
                for t, v in stats[arm].items()
            },
        }
    results["arms"]["refined+QC"]["qc_attempts"] = len(checked)
    results["arms"]["refined+QC"]["qc_rejected"] = int(sum(f < args.qc_threshold for f in checked))
    results["arms"]["refined+QC"]["lesions_without_passing_attempt"] = sum(not r.get("kept", True) for r in qc_records)

    logger.info("realism classifiers and downstream segmenters")
    for arm in ARMS:
        if len(crops[arm]) >= 4 and len(crops["reference"]) >= 4:
            results["arms"][arm]["real_vs_synthetic_accuracy"] = realism_accuracy(
                crops["reference"], crops[arm], config, args.classifier_steps, args.classifier_repeats, args.seed
            )
    rng = np.random.default_rng(args.seed)
    splits = {}
    for arm in ARMS:
        order = rng.permutation(len(crops[arm]))
        cut = int(0.7 * len(order))
        splits[arm] = ([crops[arm][i] for i in order[:cut]], [crops[arm][i] for i in order[cut:]])
    downstream = {}
    for trained_on in ARMS:
        train, _ = splits[trained_on]
        if len(train) < 4:
            continue
        model = train_segmenter(train, config, args.segmenter_steps, args.seed)
        downstream[trained_on] = {arm: lesion_dice(model, splits[arm][1], config) for arm in ARMS if splits[arm][1]}
    results["downstream_lesion_dice"] = downstream
    results["seconds"] = round(time.perf_counter() - started, 1)

    print(f"\nLearned synthesis benchmark: {len(types)} types x {args.lesions_per_type} lesions per arm, "
          f"{args.spacing} mm phantoms; QC threshold {args.qc_threshold:.0%}; reference = {results['reference']}")
    header = ["arm", "lesions", "QC pass (pasta-small)", "QC pass (QC model)", "contrast HU", "realism acc (CNN)",
              "realism acc (stats)"]
    print("  ".join(f"{h:>20}" for h in header))
    for arm in ARMS:
        a = results["arms"][arm]
        row = [arm, a["lesions"], a["qc_pass_rate_shipped"], a["qc_pass_rate_qc_model"], a["mean_contrast_hu"],
               a.get("real_vs_synthetic_accuracy"), a["feature_realism_accuracy"]]
        print("  ".join(f"{str(v):>20}" for v in row))
    print("\nper type (contrast HU / lesion texture HU / organ texture HU):")
    print(f"{'type':>20}" + "".join(f"{arm:>26}" for arm in ARMS))
    for t in types:
        cells = []
        for arm in ARMS:
            p = results["arms"][arm]["per_type"][t]
            cells.append(f"{p['contrast_hu']} / {p['lesion_texture_hu']} / {p['organ_texture_hu']}")
        print(f"{t:>20}" + "".join(f"{c:>26}" for c in cells))
    print("\ndownstream lesion Dice (rows: segmenter trained on, columns: held-out crops of)")
    print(f"{'':>14}" + "".join(f"{arm:>14}" for arm in ARMS))
    for trained_on, row in downstream.items():
        print(f"{trained_on:>14}" + "".join(f"{row.get(arm, float('nan')):>14}" for arm in ARMS))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    if gallery:
        chosen = [gallery[t] for t in types if t in gallery][:8]
        render_gallery(chosen, args.gallery)
        print(f"wrote {args.gallery}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
