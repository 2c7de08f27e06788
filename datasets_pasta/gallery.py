"""A gallery of synthetic lesions: one panel per lesion type, to judge realism at a glance.

Each panel is an axial slice through the lesion (radiological convention: the patient's right
on the viewer's left, anterior up), windowed for the organ, with the lesion mask's contour
and an excerpt of the report measured from the voxels. Bases: a real CT folder where it holds
enough of the lesion's organ, the phantom otherwise.

    python -m datasets_pasta.gallery --source ../shared/data/ct --out docs/gallery.png
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from modeling_pasta.report import LESION_TYPES

from .bases import HealthyBase, load_base_dir, resample_base
from .phantom import make_phantom
from .sample import CorpusSample, generate_sample
from .views import WINDOWS, radiological_axial

logger = logging.getLogger(__name__)


def _window_for(lesion_type: str) -> tuple[float, float]:
    if lesion_type == "lung_cancer":
        centre, width = WINDOWS["lung"]
    elif lesion_type == "bone_metastasis":
        centre, width = WINDOWS["bone"]
    else:
        centre, width = WINDOWS["soft tissue"]
    return centre - width / 2, centre + width / 2


def choose_real_base(lesion_type: str, real_bases: Sequence[HealthyBase], min_organ_ml: float = 15.0) -> HealthyBase | None:
    """The first real base holding at least ``min_organ_ml`` of the type's organ, or None."""
    organ = LESION_TYPES[lesion_type].organ
    for base in real_bases:
        voxel_ml = float(np.prod(base.spacing_mm)) / 1000.0
        if base.organ_mask(organ).sum() * voxel_ml >= min_organ_ml:
            return base
    return None


def lesion_panel(ax, sample: CorpusSample, crop_mm: float = 110.0, title: str | None = None) -> None:
    """Draw the axial slice through lesion 1 of ``sample`` (crop ``crop_mm`` wide, outlined, annotated)."""
    import matplotlib.patheffects as pe

    lesion = sample.report.lesions[0]
    mask = sample.lesion_mask == 1
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    ct = radiological_axial(sample.ct_hu, z).astype(np.float32)
    m = radiological_axial(mask, z)
    rows, cols = np.nonzero(m)
    spacing = sample.spacing_mm
    half_r = int(crop_mm / 2 / spacing[1])
    half_c = int(crop_mm / 2 / spacing[0])
    r0 = int(np.clip(rows.mean() - half_r, 0, max(0, ct.shape[0] - 2 * half_r)))
    c0 = int(np.clip(cols.mean() - half_c, 0, max(0, ct.shape[1] - 2 * half_c)))
    box = (slice(r0, r0 + 2 * half_r), slice(c0, c0 + 2 * half_c))
    lo, hi = _window_for(lesion.type)
    extent = (0, (box[1].stop - box[1].start) * spacing[0], (box[0].stop - box[0].start) * spacing[1], 0)
    ax.imshow(ct[box], cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="bilinear")
    ax.contour(m[box].astype(float), levels=[0.5], colors=["#ff3b30"], linewidths=0.8,
               extent=(extent[0], extent[1], extent[3], extent[2]), origin="upper")
    ax.set_title(title or LESION_TYPES[lesion.type].readable, fontsize=9, fontweight="bold")
    size = " x ".join(f"{d:.0f}" for d in lesion.size_mm)
    text = (f"{size} mm, {lesion.mean_hu:.0f} HU\n{lesion.density}, {lesion.texture}\n{lesion.location}"
            f"\n[{sample.base_id}, {sample.phase}]")
    ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=6.2, color="white", va="bottom",
            path_effects=[pe.withStroke(linewidth=1.5, foreground="black")])
    ax.set_axis_off()


def render_gallery(
    out_path: str | Path,
    *,
    sources: Sequence[str | Path] = (),
    lesion_types: Sequence[str] | None = None,
    spacing_mm: float = 1.5,
    seed: int = 0,
) -> Path:
    """Generate one lesion of each type and save a grid of annotated axial panels as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError("the gallery needs matplotlib: pip install matplotlib") from err

    types = list(lesion_types or LESION_TYPES)
    real = [resample_base(b, spacing_mm) for src in sources for b in load_base_dir(src)]
    ncols = 5
    nrows = int(np.ceil(len(types) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 2.6, nrows * 2.9), facecolor="black")
    phantom: HealthyBase | None = None
    for i, (ax, lesion_type) in enumerate(zip(np.ravel(axes), types)):
        base = choose_real_base(lesion_type, real)
        if base is None:
            phantom = phantom or make_phantom(spacing_mm=spacing_mm, phase="venous", seed=seed)
            base = phantom
        sample = generate_sample(base, [lesion_type], seed=seed * 1000 + i, case_id=f"gallery-{lesion_type}")
        logger.info("%s: %s", lesion_type, sample.report.lesions[0].location)
        lesion_panel(ax, sample)
        ax.title.set_color("white")
    for ax in np.ravel(axes)[len(types):]:
        ax.set_axis_off()
    fig.suptitle("PASTA-Gen synthetic lesions (axial, mask contour in red, report fields measured from voxels)",
                 color="white", fontsize=10)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=130, facecolor="black")
    plt.close(fig)
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets_pasta.gallery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gallery.png"), help="PNG to write")
    parser.add_argument("--source", action="append", default=[], help="folder of real bases (repeatable)")
    parser.add_argument("--spacing", type=float, default=1.5, help="voxel size in mm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = render_gallery(args.out, sources=args.source, spacing_mm=args.spacing, seed=args.seed)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
