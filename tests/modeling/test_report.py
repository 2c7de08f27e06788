"""The report schema and the one measurement function, checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modeling_pasta.organs import TOTALSEGMENTATOR_TOTAL, name_to_id
from modeling_pasta.report import (
    LESION_TYPES,
    LesionReport,
    ReportValidationError,
    StructuredReport,
    lesion_diameters_mm,
    measure_lesion,
    render_impression,
    validate_report,
)

IDS = name_to_id(TOTALSEGMENTATOR_TOTAL)


def _lesion_report(**overrides) -> dict:
    item = {
        "id": 1,
        "type": "liver_cancer",
        "malignant": True,
        "organ": "liver",
        "location": "right lobe, segment VII",
        "size_mm": [34.0, 28.5, 22.0],
        "volume_ml": 11.2,
        "mean_hu": 41.3,
        "density": "hypodense",
        "density_variation": "heterogeneous",
        "shape": "lobulated",
        "margin": "ill_defined",
        "enhancement": "arterial_washout",
        "texture": "solid",
        "relation_to_adjacent": "abutting",
        "adjacent_organs": ["right kidney"],
        "special_features": ["necrosis"],
    }
    item.update(overrides)
    return item


def _report(**overrides) -> dict:
    data = {
        "schema_version": "1.0",
        "modality": "CT",
        "phase": "venous",
        "spacing_mm": [1.0, 1.0, 1.0],
        "lesions": [_lesion_report()],
        "impression": "One lesion.",
    }
    data.update(overrides)
    return data


def test_schema_example_validates_and_round_trips():
    report = validate_report(_report())
    assert isinstance(report, StructuredReport)
    again = StructuredReport.from_json(report.to_json())
    assert again.to_dict() == report.to_dict()
    assert "confidence" not in report.to_dict()["lesions"][0]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(phase="delayed"), "phase"),
        (lambda d: d["lesions"][0].update(type="brain_tumor"), "lesions[0].type"),
        (lambda d: d["lesions"][0].update(size_mm=[10.0, 20.0, 5.0]), "largest first"),
        (lambda d: d["lesions"][0].update(malignant=False), "liver_cancer is malignant"),
        (lambda d: d["lesions"][0].update(mean_hu=float("nan")), "mean_hu"),
        (lambda d: d["lesions"][0].update(special_features=["glitter"]), "special_features[0]"),
        (lambda d: d["lesions"][0].update(confidence=1.5), "confidence"),
        (lambda d: d.pop("impression"), "missing field"),
        (lambda d: d.update(schema_version="0.1"), "unsupported version"),
    ],
)
def test_invalid_reports_name_the_field(mutate, message):
    data = json.loads(json.dumps(_report()))
    mutate(data)
    with pytest.raises(ReportValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_report(data)


def test_fifteen_lesion_types_ten_malignant():
    assert len(LESION_TYPES) == 15
    assert sum(info.malignant for info in LESION_TYPES.values()) == 10


def _scene(spacing=(2.0, 1.5, 3.0)):
    """A 40^3 grid: liver block on the patient's right (+x end), right kidney below it."""
    shape = (40, 40, 40)
    organ_map = np.zeros(shape, np.uint8)
    organ_map[20:40, 5:35, 15:40] = IDS["liver"]
    organ_map[20:40, 5:35, 0:14] = IDS["kidney_right"]
    ct = np.full(shape, -100, np.int16)
    ct[organ_map == IDS["liver"]] = 60
    ct[organ_map == IDS["kidney_right"]] = 30
    affine = np.diag([*spacing, 1.0])
    return ct, organ_map, affine


def test_measure_box_lesion_matches_independent_measurement():
    ct, organ_map, affine = _scene()
    mask = np.zeros(ct.shape, bool)
    mask[24:34, 12:18, 25:28] = True  # 10 x 6 x 3 voxels
    ct[mask] = 20
    ct[25, 13, 26] = 120  # one brighter voxel: the mean must see it
    m = measure_lesion(ct, mask, organ_map, affine, TOTALSEGMENTATOR_TOTAL)
    # An axis-aligned box: the three diameters are its edge lengths in mm.
    assert m.size_mm == sorted([10 * 2.0, 6 * 1.5, 3 * 3.0], reverse=True)
    assert m.volume_ml == pytest.approx(mask.sum() * 2.0 * 1.5 * 3.0 / 1000, abs=1e-3)
    assert m.mean_hu == pytest.approx(float(ct[mask].mean()), abs=0.05)
    assert m.organ == "liver" and m.organ_label == "liver"
    assert m.density == "hypodense"  # ~21 HU vs 60 HU liver
    assert m.relation_to_adjacent == "clear"
    assert m.location.startswith("right lobe")


def test_density_bands_are_relative_to_the_organ():
    ct, organ_map, affine = _scene()
    mask = np.zeros(ct.shape, bool)
    mask[26:30, 20:24, 30:34] = True
    for value, expected in [(65, "isodense"), (75, "hyperdense"), (45, "hypodense")]:
        ct[mask] = value
        assert measure_lesion(ct, mask, organ_map, affine, TOTALSEGMENTATOR_TOTAL).density == expected


def test_adjacency_invading_abutting_clear():
    ct, organ_map, affine = _scene()
    invading = np.zeros(ct.shape, bool)
    invading[26:30, 20:24, 12:18] = True  # crosses z=14/15 into the kidney
    m = measure_lesion(ct, invading, organ_map, affine, TOTALSEGMENTATOR_TOTAL, host_organ="liver")
    assert m.relation_to_adjacent == "invading" and m.adjacent_organs == ["right kidney"]
    abutting = np.zeros(ct.shape, bool)
    abutting[26:30, 20:24, 14:18] = True  # z=14 (fat) touches the kidney's top slice z=13
    m = measure_lesion(ct, abutting, organ_map, affine, TOTALSEGMENTATOR_TOTAL)
    assert m.relation_to_adjacent == "abutting" and m.adjacent_organs == ["right kidney"]
    clear = np.zeros(ct.shape, bool)
    clear[26:30, 20:24, 15:20] = True  # one empty slice (z=14) between lesion and kidney
    assert measure_lesion(ct, clear, organ_map, affine, TOTALSEGMENTATOR_TOTAL).relation_to_adjacent == "clear"


def test_kidney_pole_follows_world_z_not_array_order():
    ct, organ_map, affine = _scene()
    mask = np.zeros(ct.shape, bool)
    mask[28:31, 20:23, 11:13] = True  # top of the kidney (z 0..13)
    assert measure_lesion(ct, mask, organ_map, affine, TOTALSEGMENTATOR_TOTAL).location == "right kidney, upper pole"
    # The same anatomy stored with the z axis flipped (an "I" orientation) must give the same answer.
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    flip[2, 3] = 39
    m = measure_lesion(ct[:, :, ::-1], mask[:, :, ::-1], organ_map[:, :, ::-1], affine @ flip, TOTALSEGMENTATOR_TOTAL)
    assert m.location == "right kidney, upper pole"


def test_diameters_of_rotated_ellipsoid_use_principal_axes():
    # An ellipsoid with semi-axes 12, 6, 3 voxels rotated 45 degrees in the x-y plane (1 mm voxels).
    grid = np.indices((60, 60, 20)).reshape(3, -1).T - np.array([30, 30, 10])
    c = s = np.sqrt(0.5)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    local = grid @ rot
    inside = ((local / np.array([12.0, 6.0, 3.0])) ** 2).sum(axis=1) <= 1
    diameters = lesion_diameters_mm(grid[inside] + 30, np.eye(4))
    assert diameters[0] == pytest.approx(25, abs=1.5)
    assert diameters[1] == pytest.approx(13, abs=1.5)
    assert diameters[2] == pytest.approx(7, abs=1.0)


def test_measure_errors():
    ct, organ_map, affine = _scene()
    with pytest.raises(ValueError, match="empty"):
        measure_lesion(ct, np.zeros(ct.shape, bool), organ_map, affine, TOTALSEGMENTATOR_TOTAL)
    with pytest.raises(ValueError, match="shape mismatch"):
        measure_lesion(ct, np.zeros((4, 4, 4), bool), organ_map, affine, TOTALSEGMENTATOR_TOTAL)


def test_impression_mentions_every_lesion():
    lesions = [LesionReport(**_lesion_report()), LesionReport(**_lesion_report(id=2, type="kidney_cyst", malignant=False, location="left kidney, lower pole"))]
    text = render_impression(lesions)
    assert "2 lesions" in text and "liver cancer" in text and "kidney cyst" in text
    assert render_impression([]) == "No focal lesion identified."


def test_vertebra_location_with_and_without_level():
    from modeling_pasta.report import _sub_location

    assert _sub_location("vertebrae_L3", np.array([0.5, 0.5, 0.5])) == "L3 vertebral body"
    assert _sub_location("vertebrae", np.array([0.5, 0.5, 0.5])) == "vertebral body"
