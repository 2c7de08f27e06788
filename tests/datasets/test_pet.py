"""Simulated FDG PET: physiological organ uptake, avid malignant and cold benign lesions, PSF and noise."""

from __future__ import annotations

import numpy as np
import pytest

from datasets_pasta.pet import organ_suv_range, simulate_pet
from modeling_pasta.organs import TOTALSEGMENTATOR_TOTAL, name_to_id

IDS = name_to_id(TOTALSEGMENTATOR_TOTAL)
SPACING = (4.0, 4.0, 4.0)


def _ball(shape, centre, radius_vox) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius_vox**2


@pytest.fixture(scope="module")
def torso():
    """A 48^3 grid at 4 mm: a liver holding a 16 mm-radius cancer and a cyst, a lung, a kidney."""
    shape = (48, 48, 48)
    organs = np.zeros(shape, np.uint8)
    organs[6:42, 6:42, 4:44] = IDS["autochthon_left"]  # some labelled body so the body hull exists
    organs[8:30, 8:40, 6:24] = IDS["liver"]
    organs[8:40, 8:40, 28:44] = IDS["lung_lower_lobe_left"]
    organs[32:40, 10:20, 6:20] = IDS["kidney_left"]
    lesions = np.zeros(shape, np.uint8)
    lesions[_ball(shape, (18, 16, 15), 4.0)] = 1
    lesions[_ball(shape, (18, 32, 15), 4.0)] = 2
    lesions[organs != IDS["liver"]] = 0
    return organs, lesions


def _pet(torso, seed=0):
    organs, lesions = torso
    return simulate_pet(organs, TOTALSEGMENTATOR_TOTAL, lesions, ["liver_cancer", "liver_cyst"], SPACING,
                        np.random.default_rng(seed))


def test_shape_dtype_and_non_negative(torso):
    pet = _pet(torso)
    assert pet.shape == torso[0].shape and pet.dtype == np.float32
    assert np.isfinite(pet).all() and pet.min() >= 0.0


def test_uptake_order_malignant_liver_lung_and_cold_cyst(torso):
    organs, lesions = torso
    liver = (organs == IDS["liver"]) & (lesions == 0)
    lung = organs == IDS["lung_lower_lobe_left"]
    for seed in range(5):
        pet = _pet(torso, seed)
        cancer, cyst = pet[lesions == 1].mean(), pet[lesions == 2].mean()
        assert cancer > pet[liver].mean() > pet[lung].mean()
        assert cyst < cancer and cyst < pet[liver].mean()
        assert 1.5 < np.median(pet[liver]) < 3.0  # liver ~2 SUV
        assert np.median(pet[lung]) < 0.8
        assert np.median(pet[organs == IDS["kidney_left"]]) > np.median(pet[liver])


def test_deterministic_and_blurred(torso):
    a, b = _pet(torso, 3), _pet(torso, 3)
    assert np.array_equal(a, b)
    # The point-spread function spreads the cancer's uptake past its edge into the liver.
    organs, lesions = torso
    ring = _ball(organs.shape, (18, 16, 15), 5.5) & ~_ball(organs.shape, (18, 16, 15), 4.0)
    far_liver = (organs == IDS["liver"]) & ~_ball(organs.shape, (18, 16, 15), 8.0) & (lesions == 0)
    assert a[ring].mean() > a[far_liver].mean()


def test_fine_grid_is_simulated_coarser_and_interpolated_back(torso):
    # At 1.5 mm the PET is computed on 3 mm voxels and brought back to the CT grid.
    organs, lesions = torso
    pet = simulate_pet(organs, TOTALSEGMENTATOR_TOTAL, lesions, ["liver_cancer", "liver_cyst"], (1.5, 1.5, 1.5),
                       np.random.default_rng(0))
    assert pet.shape == organs.shape and pet.dtype == np.float32 and pet.min() >= 0.0
    liver = (organs == IDS["liver"]) & (lesions == 0)
    assert pet[lesions == 1].mean() > pet[liver].mean() > pet[organs == IDS["lung_lower_lobe_left"]].mean()
    # Interpolated, not blocky: neighbouring voxels differ.
    assert np.mean(pet[:, :-1, :] != pet[:, 1:, :]) > 0.9


def test_outside_the_body_is_cold(torso):
    pet = _pet(torso)
    assert pet[0:2, 0:2, :].max() < 0.5


def test_inputs_are_checked(torso):
    organs, lesions = torso
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same 3D shape"):
        simulate_pet(organs, TOTALSEGMENTATOR_TOTAL, lesions[:-1], ["liver_cancer", "liver_cyst"], SPACING, rng)
    with pytest.raises(ValueError, match="id 2 but only 1 lesion type"):
        simulate_pet(organs, TOTALSEGMENTATOR_TOTAL, lesions, ["liver_cancer"], SPACING, rng)
    with pytest.raises(ValueError, match="unknown lesion type"):
        simulate_pet(organs, TOTALSEGMENTATOR_TOTAL, lesions, ["liver_cancer", "cyst"], SPACING, rng)


def test_organ_ranges_follow_fdg_biodistribution():
    assert organ_suv_range("brain")[0] > organ_suv_range("liver")[1]
    assert organ_suv_range("inferior_vena_cava") == organ_suv_range("aorta")
    assert organ_suv_range("kidney_cyst_left")[1] < organ_suv_range("kidney_left")[0]
    assert organ_suv_range("lung_upper_lobe_right")[1] < 1.0
    assert organ_suv_range("vertebrae_L2") == (1.0, 1.5)
