"""Lesion models: every type on a real base and on the phantom, realism checks measured from the voxels."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
from scipy import ndimage

from datasets_pasta.bases import BaseError, HealthyBase, load_base_dir
from datasets_pasta.lesions import (
    HOLLOW_ORGAN_TYPES,
    SIZE_CLASSES,
    LesionSpec,
    insert_lesion,
    sample_lesion_spec,
    synthesize_lesion,
)
from modeling_pasta.report import LESION_TYPES, PHASES, measure_lesion

CYSTS = ("liver_cyst", "kidney_cyst", "pancreatic_cyst")
STONES = ("gallstone", "kidney_stone")
#: The real abdomen CT has no esophagus (its chest is cut off); the phantom covers that type.
REAL_TYPES = [t for t in LESION_TYPES if t != "esophageal_cancer"]


@pytest.fixture(scope="module")
def real_base(real_ct_dir) -> HealthyBase:
    """``abdomen_ct`` (3 mm, plain phase) from the shared real data."""
    return next(b for b in load_base_dir(real_ct_dir) if b.base_id == "abdomen_ct")


@pytest.fixture(scope="module")
def phantom_base() -> HealthyBase:
    from datasets_pasta.phantom import make_phantom

    return make_phantom(spacing_mm=4.0, seed=0)


def _insert(base: HealthyBase, lesion_type: str, seed: int, **kwargs):
    ct = base.ct_hu.astype(np.float32)
    lesion = synthesize_lesion(ct, base, lesion_type, np.random.default_rng(seed), **kwargs)
    return ct, lesion


def _measure(base: HealthyBase, ct: np.ndarray, mask: np.ndarray):
    # No host organ hint: the lesion must overlap its own organ most.
    return measure_lesion(np.rint(ct).astype(np.int16), mask, base.organ_map, base.affine, base.label_names)


def _distance_to_boundary_vox(organ: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Distance (voxels) from each mask voxel to the organ's boundary, inside and outside alike.

    Computed in a box 4 voxels around the mask: enough for distances up to a few voxels.
    """
    lo = np.maximum(np.argwhere(mask).min(axis=0) - 4, 0)
    hi = np.argwhere(mask).max(axis=0) + 5
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop = organ[box]
    dist = np.where(crop, ndimage.distance_transform_edt(crop), ndimage.distance_transform_edt(~crop))
    return dist[mask[box]]


def _check_lesion(base: HealthyBase, lesion_type: str, ct: np.ndarray, lesion) -> None:
    spec, mask = lesion.spec, lesion.mask
    group = LESION_TYPES[lesion_type].organ
    assert mask.dtype == bool and mask.shape == base.ct_hu.shape and mask.any()
    assert spec.organ_label in base.label_names.values()
    measured = _measure(base, ct, mask)
    assert measured.organ == group, (measured.organ, measured.organ_label)
    if lesion_type in CYSTS:
        assert 0.0 <= measured.mean_hu <= 25.0, measured.mean_hu
    if lesion_type in STONES:
        assert measured.mean_hu > 150.0, measured.mean_hu
    if lesion_type == "lung_cancer":
        assert measured.density == "hyperdense"
    if lesion_type in HOLLOW_ORGAN_TYPES:
        dist = _distance_to_boundary_vox(base.organ_mask(group), mask)
        if spec.params["growth"] == "wall":
            # A shell: most voxels lie within ~2 voxels, or the (thicker) wall thickness, of the boundary.
            shell = max(2.0, spec.params["thickness_mm"] / min(base.spacing_mm))
            assert np.mean(dist <= shell) >= 0.5, np.mean(dist <= shell)
        else:  # a polypoid mass attached to the wall
            assert spec.params["growth"] == "intraluminal"
            assert dist.min() <= 1.0
    json.dumps(asdict(spec))  # the spec is JSON-able, as the corpus stores it


@pytest.mark.real_data
@pytest.mark.parametrize("lesion_type", REAL_TYPES)
def test_every_type_on_the_real_base(real_base, lesion_type):
    # Cysts get at least "small": tiny cysts are a few voxels at 3 mm and partial volume lifts their HU.
    size = "medium" if lesion_type in CYSTS else None
    for seed in range(2):
        ct, lesion = _insert(real_base, lesion_type, seed, size_class=size)
        _check_lesion(real_base, lesion_type, ct, lesion)


@pytest.mark.parametrize("lesion_type", list(LESION_TYPES))
def test_every_type_on_the_phantom(phantom_base, lesion_type):
    size = "medium" if lesion_type in CYSTS else None
    for seed in range(2):
        ct, lesion = _insert(phantom_base, lesion_type, seed, size_class=size)
        _check_lesion(phantom_base, lesion_type, ct, lesion)


def test_hollow_organ_cancers_hug_the_wall(phantom_base):
    growths = set()
    for lesion_type in HOLLOW_ORGAN_TYPES:
        for seed in range(2, 5):
            ct, lesion = _insert(phantom_base, lesion_type, seed)
            _check_lesion(phantom_base, lesion_type, ct, lesion)
            growths.add(lesion.spec.params["growth"])
    assert growths == {"wall", "intraluminal"}


@pytest.mark.real_data
def test_missing_organ_is_a_base_error_naming_it(real_base):
    ct = real_base.ct_hu.astype(np.float32)
    with pytest.raises(BaseError, match=r"no 'esophagus'.*organs available: .*liver"):
        synthesize_lesion(ct, real_base, "esophageal_cancer", np.random.default_rng(0))
    assert np.array_equal(ct, real_base.ct_hu)


def test_unknown_type_and_size_class_are_named(phantom_base):
    ct = phantom_base.ct_hu.astype(np.float32)
    with pytest.raises(ValueError, match=r"unknown lesion type 'liver_tumour'.*liver_cancer"):
        synthesize_lesion(ct, phantom_base, "liver_tumour", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"unknown size class 'huge'"):
        sample_lesion_spec("liver_cyst", phantom_base, "venous", np.random.default_rng(0), size_class="huge")


@pytest.mark.real_data
def test_deterministic_for_a_seed(real_base):
    ct_a, a = _insert(real_base, "kidney_cancer", 7)
    ct_b, b = _insert(real_base, "kidney_cancer", 7)
    assert a.spec == b.spec
    assert np.array_equal(a.mask, b.mask) and np.array_equal(ct_a, ct_b)
    _, c = _insert(real_base, "kidney_cancer", 8)
    assert not np.array_equal(a.mask, c.mask)


@pytest.mark.real_data
@pytest.mark.parametrize("lesion_type", ["liver_cancer", "colorectal_cancer", "pancreatic_cancer", "gallstone"])
def test_ct_changes_only_near_the_lesion(real_base, lesion_type):
    for seed in range(3):
        ct, lesion = _insert(real_base, lesion_type, seed)
        changed = np.argwhere(ct != real_base.ct_hu.astype(np.float32))
        voxels = np.argwhere(lesion.mask)
        # The blended edge reaches edge_mm (<= 6 mm, 2 voxels at 3 mm) past the mask.
        assert (changed >= voxels.min(axis=0) - 3).all() and (changed <= voxels.max(axis=0) + 3).all()
        # Inside the mask the lesion dominates: the CT changed on most of its voxels.
        assert np.mean(ct[lesion.mask] != real_base.ct_hu[lesion.mask]) > 0.9


@pytest.mark.real_data
def test_occupied_voxels_are_neither_covered_nor_blended(real_base):
    ct = real_base.ct_hu.astype(np.float32)
    rng = np.random.default_rng(3)
    occupied = np.zeros(ct.shape, dtype=bool)
    first = synthesize_lesion(ct, real_base, "liver_cyst", rng, size_class="large", occupied=occupied)
    occupied |= first.mask
    after_first = ct.copy()
    for _ in range(3):
        lesion = synthesize_lesion(ct, real_base, "liver_cancer", rng, size_class="large", occupied=occupied)
        assert not (lesion.mask & occupied).any()
        occupied |= lesion.mask
    assert np.array_equal(ct[first.mask], after_first[first.mask])


@pytest.mark.real_data
def test_size_class_shrinks_to_fit_a_small_organ(real_base):
    # The real pancreas is thin (inscribed radius ~7 mm): a "large" (20-40 mm radius) cyst does not fit.
    ct, lesion = _insert(real_base, "pancreatic_cyst", 0, size_class="large")
    assert lesion.spec.size_class != "large"
    lo, hi = SIZE_CLASSES[lesion.spec.size_class]
    assert lo <= np.mean(lesion.spec.radii_mm) <= hi
    measured = _measure(real_base, ct, lesion.mask)
    assert measured.organ == "pancreas" and max(measured.size_mm) < 2 * SIZE_CLASSES["large"][0]


@pytest.mark.real_data
def test_liver_cancer_contrast_follows_the_phase_and_the_scan_own_liver(real_base):
    # HU targets are relative to this scan's liver: arterial hyperenhancement, venous washout.
    densities = {}
    for phase in ("plain", "arterial", "venous"):
        base = replace(real_base, phase=phase)
        ct, lesion = _insert(base, "liver_cancer", 1, size_class="medium")
        densities[phase] = _measure(base, ct, lesion.mask).density
        assert lesion.spec.enhancement == ("none" if phase == "plain" else "arterial_washout")
    assert densities == {"plain": "hypodense", "arterial": "hyperdense", "venous": "hypodense"}


def _specs(base: HealthyBase, lesion_types, seeds=range(2)) -> list[tuple[str, LesionSpec]]:
    return [
        (phase, sample_lesion_spec(t, base, phase, np.random.default_rng(seed)))
        for t in lesion_types
        for phase in PHASES
        for seed in seeds
    ]


def test_attributes_match_what_is_rendered(phantom_base):
    for phase, spec in _specs(phantom_base, LESION_TYPES):
        t = spec.lesion_type
        assert (spec.texture == "cystic") == (t in CYSTS), (t, spec.texture)
        if spec.texture in ("ground_glass", "part_solid"):
            assert t == "lung_cancer"
        if spec.texture == "calcified":
            assert t in STONES or "blastic" in spec.special_features
        assert (spec.margin == "spiculated") == (spec.params.get("spicules", 0.0) > 0), (t, spec.margin)
        if phase == "plain" or t in CYSTS or t in STONES:
            assert spec.enhancement == "none"
        if t == "liver_cancer" and phase != "plain":
            assert spec.enhancement == "arterial_washout"
        if "necrosis" in spec.special_features or "calcification" in spec.special_features:
            assert spec.density_variation == "heterogeneous"
        if t in CYSTS:
            assert spec.density_variation == "homogeneous" and spec.margin in ("well_defined", "lobulated")
        assert spec.invasion == ("invasion_mm" in spec.params)
        assert spec.size_class in SIZE_CLASSES


def test_hollow_organ_lesion_lies_in_a_shell_not_the_middle(phantom_base):
    # Direct check on one wall lesion: its voxels sit near the stomach boundary, the lumen's
    # medial voxels stay untouched.
    stomach = phantom_base.organ_mask("stomach")
    depth = ndimage.distance_transform_edt(stomach)
    for seed in range(6):
        spec = sample_lesion_spec("gastric_cancer", phantom_base, "venous", np.random.default_rng(seed))
        if spec.params["growth"] != "wall":
            continue
        ct = phantom_base.ct_hu.astype(np.float32)
        lesion = insert_lesion(ct, phantom_base, spec, np.random.default_rng(seed))
        inner = lesion.mask & stomach
        assert depth[inner].max() < depth[stomach].max()
        assert np.median(depth[inner]) <= 2.0
        return
    pytest.fail("no wall-thickening gastric cancer in 6 seeds")


def test_insert_rejects_an_integer_ct(phantom_base):
    spec = sample_lesion_spec("liver_cyst", phantom_base, "venous", np.random.default_rng(0))
    with pytest.raises(ValueError, match="float working copy"):
        insert_lesion(phantom_base.ct_hu.copy(), phantom_base, spec, np.random.default_rng(0))
