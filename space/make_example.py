"""Make the Space's bundled example CT with this project's own generator (no outside data).

A held-out phantom patient (anatomy seed 100, never used for training) at 2 mm with one
synthetic liver cancer, cropped to the upper abdomen and stored in LPS orientation (as a
DICOM-derived NIfTI would be), so the demo also exercises reorientation. The reference lesion
mask and report are written beside it.

    python space/make_example.py --out space/examples
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from datasets_pasta.phantom import make_phantom
from datasets_pasta.sample import generate_sample
from modeling_pasta.image_io import save_nifti
from modeling_pasta.report import voxel_spacing

logger = logging.getLogger("space.make_example")

#: Half extent (mm) of the crop around the lesion: x, y, z.
CROP_HALF_MM = (110.0, 90.0, 70.0)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def make_example(out: Path, *, seed: int = 100, lesion_type: str = "liver_cancer", max_tries: int = 50) -> Path:
    """Write ``<out>/phantom_<lesion_type>.nii.gz`` (+ ``_lesion.nii.gz``, ``_report.json``); return the CT path.

    The phantom patient is anatomy seed ``seed``; lesion seeds ``seed``, ``seed + 1``, ... are tried
    until the lesion is visible (not isodense to its organ), since a demo of an invisible lesion shows nothing.
    """
    base = make_phantom(spacing_mm=2.0, seed=seed, phase="venous")
    for lesion_seed in range(seed, seed + max_tries):
        sample = generate_sample(
            base, [lesion_type], seed=lesion_seed, case_id=f"example-{lesion_type}", size_class="medium"
        )
        if sample.report.lesions[0].density != "isodense":
            break
        logger.info("lesion seed %d gives an isodense lesion; trying the next", lesion_seed)
    else:
        raise RuntimeError(f"no visible {lesion_type} in {max_tries} lesion seeds from {seed}")
    mask = sample.lesion_mask > 0
    centre = np.argwhere(mask).mean(axis=0)
    spacing = voxel_spacing(sample.affine)
    half = np.round(np.asarray(CROP_HALF_MM) / spacing).astype(int)
    lo = np.maximum(np.round(centre).astype(int) - half, 0)
    hi = np.minimum(lo + 2 * half, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = sample.affine.copy()
    affine[:3, 3] = sample.affine[:3, :3] @ lo + sample.affine[:3, 3]
    # Store in LPS voxel order: flip x and y (and move the origin to the flipped corner).
    shape = np.asarray(mask[box].shape)
    flip = np.eye(4)
    flip[0, 0], flip[1, 1] = -1.0, -1.0
    flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
    lps_affine = affine @ flip
    out.mkdir(parents=True, exist_ok=True)
    stem = f"phantom_{lesion_type}"
    ct_path = save_nifti(sample.ct_hu[box][::-1, ::-1].astype(np.int16), lps_affine, out / f"{stem}.nii.gz")
    save_nifti(sample.lesion_mask[box][::-1, ::-1].astype(np.uint8), lps_affine, out / f"{stem}_lesion.nii.gz")
    (out / f"{stem}_report.json").write_text(sample.report.to_json(indent=1))
    lesion = sample.report.lesions[0]
    logger.info(
        "%s: %s voxels, lesion seed %d, %s mm, %s (%.0f HU)",
        ct_path, tuple(int(s) for s in shape), lesion_seed, lesion.size_mm, lesion.density, lesion.mean_hu,
    )
    return ct_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "examples")
    parser.add_argument(
        "--seed", type=int, default=100, help="phantom anatomy seed and first lesion seed (default: 100, held out)"
    )
    parser.add_argument("--lesion-type", default="liver_cancer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_example(args.out, seed=args.seed, lesion_type=args.lesion_type)


if __name__ == "__main__":
    main()
