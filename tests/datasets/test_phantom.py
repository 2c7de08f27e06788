"""The procedural phantom: every lesion host organ, plausible HU per phase, anatomy, noise, speed."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from datasets_pasta.bases import HealthyBase, estimate_phase
from datasets_pasta.phantom import make_phantom
from modeling_pasta.organs import ORGAN_GROUPS, TOTALSEGMENTATOR_TOTAL
from modeling_pasta.report import LESION_TYPES, PHASES

COARSE_MM = 6.0
# Smallest acceptable volume (ml) of each lesion host organ at coarse spacing (adult ranges are larger).
MIN_VOLUME_ML = {
    "lung": 2000,
    "liver": 700,
    "gallbladder": 15,
    "pancreas": 25,
    "urinary_bladder": 80,
    "esophagus": 20,
    "stomach": 100,
    "kidney": 150,
    "colon": 300,
    "vertebrae": 300,
}


@pytest.fixture(scope="module")
def by_phase() -> dict[str, HealthyBase]:
    return {phase: make_phantom(spacing_mm=COARSE_MM, phase=phase, seed=3) for phase in PHASES}


def _volume_ml(base: HealthyBase, organ: str) -> float:
    return float(base.organ_mask(organ).sum() * np.prod(base.spacing_mm) / 1000.0)


def _mean_hu(base: HealthyBase, organ: str) -> float:
    return float(base.ct_hu[base.organ_mask(organ)].mean())


def _centroid_mm(base: HealthyBase, organ: str) -> np.ndarray:
    vox = np.argwhere(base.organ_mask(organ)).mean(axis=0)
    return base.affine[:3, :3] @ vox + base.affine[:3, 3]


def _fine_noise_hu(base: HealthyBase, organ: str) -> float:
    """High-pass residual standard deviation inside the eroded organ (as estimate_noise_hu measures)."""
    ct = base.ct_hu.astype(np.float32)
    inside = ndimage.binary_erosion(base.organ_mask(organ), iterations=2)
    return float((ct - ndimage.gaussian_filter(ct, 1.0))[inside].std() / 0.95)


def test_every_lesion_host_organ_is_present_with_a_reasonable_volume(by_phase):
    base = by_phase["venous"]
    assert set(MIN_VOLUME_ML) == {info.organ for info in LESION_TYPES.values()}
    for organ, minimum in MIN_VOLUME_ML.items():
        assert base.has_organ(organ), organ
        assert _volume_ml(base, organ) > minimum, (organ, _volume_ml(base, organ))
    for name in ORGAN_GROUPS["lung"] + ("kidney_left", "kidney_right"):
        assert _volume_ml(base, name) > 50, name
    present = set(base.present_organs())
    levels = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    assert {f"vertebrae_{level}" for level in levels} <= present
    for name in ("sacrum", "hip_left", "hip_right", "autochthon_left", "iliopsoas_right", "rib_left_5",
                 "rib_right_12", "trachea", "heart", "aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein",
                 "spleen", "duodenum", "small_bowel"):
        assert name in present, name


def test_grid_affine_and_metadata_follow_the_arguments():
    base = make_phantom(spacing_mm=(5.0, 6.0, 7.5), phase="arterial", noise_hu=9.0, seed=11,
                        field_of_view_mm=(300.0, 240.0, 450.0))
    assert base.ct_hu.dtype == np.int16 and base.organ_map.dtype == np.uint8
    assert base.ct_hu.shape == (60, 40, 60) == base.organ_map.shape
    assert base.spacing_mm == pytest.approx((5.0, 6.0, 7.5))
    assert nib.aff2axcodes(base.affine) == ("R", "A", "S")
    centre = base.affine[:3, :3] @ ((np.array(base.ct_hu.shape) - 1) / 2) + base.affine[:3, 3]
    assert centre == pytest.approx(np.zeros(3), abs=1e-6)
    assert (base.base_id, base.phase, base.noise_hu) == ("phantom-11", "arterial", 9.0)
    assert base.label_names == TOTALSEGMENTATOR_TOTAL
    assert set(np.unique(base.organ_map)) <= {0, *TOTALSEGMENTATOR_TOTAL}
    corner = base.ct_hu[:4, :4, :4]
    assert corner.mean() < -950  # air outside the body


def test_hu_are_plausible_per_phase(by_phase):
    plain, arterial, venous = (by_phase[p] for p in ("plain", "arterial", "venous"))
    assert 45 < _mean_hu(plain, "liver") < 70
    assert 90 < _mean_hu(venous, "liver") < 125
    assert _mean_hu(venous, "liver") > _mean_hu(plain, "liver") + 30
    aorta = {p: _mean_hu(b, "aorta") for p, b in by_phase.items()}
    assert aorta["arterial"] > 250 and aorta["arterial"] > aorta["venous"] > aorta["plain"]
    assert _mean_hu(venous, "portal_vein_and_splenic_vein") > _mean_hu(venous, "liver")
    for base in (arterial, venous):
        assert _mean_hu(base, "kidney") > 130
        assert _mean_hu(base, "spleen") > 100
    for phase, base in by_phase.items():
        assert _mean_hu(base, "lung") < -700, phase
        assert _mean_hu(base, "vertebrae") > 150, phase
        assert estimate_phase(base.ct_hu, base.organ_map, base.label_names) == phase
        assert -20 < _mean_hu(base, "urinary_bladder") < 40, phase  # urine, thin wall
    # Bone does not enhance.
    assert abs(_mean_hu(arterial, "vertebrae") - _mean_hu(plain, "vertebrae")) < 10


def test_kidney_cortex_and_medulla_differ_in_the_arterial_phase(by_phase):
    spread = {}
    for phase in ("plain", "arterial"):
        hu = by_phase[phase].ct_hu[by_phase[phase].organ_mask("kidney")]
        spread[phase] = np.percentile(hu, 90) - np.percentile(hu, 10)
    assert spread["arterial"] > 2 * spread["plain"]


def test_hollow_organs_hold_a_lumen_under_their_label(by_phase):
    base = by_phase["plain"]
    for organ in ("stomach", "colon"):
        hu = base.ct_hu[base.organ_mask(organ)]
        assert (hu < -500).mean() > 0.05, organ  # air in the lumen, labelled as the organ
        assert (hu > 0).mean() > 0.1, organ  # wall and contents


def test_anatomical_relations(by_phase):
    base = by_phase["venous"]
    c = {name: _centroid_mm(base, name) for name in (
        "liver", "spleen", "kidney_left", "kidney_right", "heart", "urinary_bladder", "trachea", "esophagus",
        "gallbladder", "lung", "sacrum", "vertebrae_T1", "vertebrae_L5")}
    # RAS+ as this project uses it: the liver (patient's right) has larger x than the spleen.
    assert c["liver"][0] > 0 > c["spleen"][0]
    assert c["kidney_left"][2] > c["kidney_right"][2]  # left kidney higher
    assert c["lung"][2] > c["heart"][2] > c["liver"][2] > c["urinary_bladder"][2]
    assert c["vertebrae_T1"][2] > c["vertebrae_L5"][2] > c["sacrum"][2]
    assert c["urinary_bladder"][1] > c["sacrum"][1]  # bladder anterior in the pelvis
    assert c["esophagus"][1] < c["trachea"][1]  # esophagus behind the trachea
    assert c["gallbladder"][2] < c["liver"][2] and c["gallbladder"][0] > 0
    # The gallbladder sits in its fossa: it touches the liver.
    gb = ndimage.binary_dilation(base.organ_mask("gallbladder"), iterations=1)
    assert (gb & base.organ_mask("liver")).any()


def test_same_seed_is_identical_and_another_seed_differs(by_phase):
    a = by_phase["venous"]
    b = make_phantom(spacing_mm=COARSE_MM, phase="venous", seed=3)
    c = make_phantom(spacing_mm=COARSE_MM, phase="venous", seed=4)
    assert np.array_equal(a.ct_hu, b.ct_hu) and np.array_equal(a.organ_map, b.organ_map)
    assert not np.array_equal(a.organ_map, c.organ_map)
    volumes = [(_volume_ml(x, "liver"), _volume_ml(x, "kidney")) for x in (a, c)]
    assert volumes[0] != volumes[1]
    shift = np.linalg.norm(_centroid_mm(a, "liver") - _centroid_mm(c, "liver"))
    assert 0.5 < shift < 40  # jittered, not rearranged


@pytest.mark.parametrize("noise_hu", [6.0, 20.0])
def test_fine_scale_noise_matches_noise_hu(noise_hu):
    base = make_phantom(spacing_mm=4.0, noise_hu=noise_hu, seed=2)
    assert base.noise_hu == noise_hu
    assert _fine_noise_hu(base, "liver") == pytest.approx(noise_hu, rel=0.3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"phase": "portal"}, "unknown phase 'portal'"),
        ({"spacing_mm": 0.0}, "spacing_mm must be a positive"),
        ({"spacing_mm": (2.0, -1.0, 2.0)}, "spacing_mm must be a positive"),
        ({"spacing_mm": (2.0, 2.0)}, "spacing_mm must be a positive"),
        ({"noise_hu": 0.0}, "noise_hu must be a positive"),
        ({"noise_hu": -5.0}, "noise_hu must be a positive"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"field_of_view_mm": (360.0, 0.0, 480.0)}, "field_of_view_mm must be"),
        ({"spacing_mm": 0.2}, "too large: use a coarser spacing_mm"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_phantom(**kwargs)


@pytest.mark.slow
def test_default_phantom_is_fast_and_keeps_its_noise_level():
    start = time.perf_counter()
    base = make_phantom()
    elapsed = time.perf_counter() - start
    assert elapsed < 15.0, f"default phantom took {elapsed:.1f} s"
    assert base.ct_hu.shape == (240, 180, 320)
    assert base.spacing_mm == pytest.approx((1.5, 1.5, 1.5))
    assert _fine_noise_hu(base, "liver") == pytest.approx(base.noise_hu, rel=0.3)
