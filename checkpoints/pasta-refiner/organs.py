"""Organ label conventions shared by the generator, the model and the report.

Label ids follow TotalSegmentator's "total" task (v2, 117 classes), the convention of the
PASTA-Gen corpus and of most public whole-body CT label maps. A user's label map with other
ids is translated through a JSON file ``{"id": "name"}`` (see :func:`load_label_names`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

#: TotalSegmentator "total" (v2) label id -> organ name.
TOTALSEGMENTATOR_TOTAL: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    8: "adrenal_gland_right",
    9: "adrenal_gland_left",
    10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left",
    12: "lung_upper_lobe_right",
    13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right",
    15: "esophagus",
    16: "trachea",
    17: "thyroid_gland",
    18: "small_bowel",
    19: "duodenum",
    20: "colon",
    21: "urinary_bladder",
    22: "prostate",
    23: "kidney_cyst_left",
    24: "kidney_cyst_right",
    25: "sacrum",
    26: "vertebrae_S1",
    27: "vertebrae_L5",
    28: "vertebrae_L4",
    29: "vertebrae_L3",
    30: "vertebrae_L2",
    31: "vertebrae_L1",
    32: "vertebrae_T12",
    33: "vertebrae_T11",
    34: "vertebrae_T10",
    35: "vertebrae_T9",
    36: "vertebrae_T8",
    37: "vertebrae_T7",
    38: "vertebrae_T6",
    39: "vertebrae_T5",
    40: "vertebrae_T4",
    41: "vertebrae_T3",
    42: "vertebrae_T2",
    43: "vertebrae_T1",
    44: "vertebrae_C7",
    45: "vertebrae_C6",
    46: "vertebrae_C5",
    47: "vertebrae_C4",
    48: "vertebrae_C3",
    49: "vertebrae_C2",
    50: "vertebrae_C1",
    51: "heart",
    52: "aorta",
    53: "pulmonary_vein",
    54: "brachiocephalic_trunk",
    55: "subclavian_artery_right",
    56: "subclavian_artery_left",
    57: "common_carotid_artery_right",
    58: "common_carotid_artery_left",
    59: "brachiocephalic_vein_left",
    60: "brachiocephalic_vein_right",
    61: "atrial_appendage_left",
    62: "superior_vena_cava",
    63: "inferior_vena_cava",
    64: "portal_vein_and_splenic_vein",
    65: "iliac_artery_left",
    66: "iliac_artery_right",
    67: "iliac_vena_left",
    68: "iliac_vena_right",
    69: "humerus_left",
    70: "humerus_right",
    71: "scapula_left",
    72: "scapula_right",
    73: "clavicula_left",
    74: "clavicula_right",
    75: "femur_left",
    76: "femur_right",
    77: "hip_left",
    78: "hip_right",
    79: "spinal_cord",
    80: "gluteus_maximus_left",
    81: "gluteus_maximus_right",
    82: "gluteus_medius_left",
    83: "gluteus_medius_right",
    84: "gluteus_minimus_left",
    85: "gluteus_minimus_right",
    86: "autochthon_left",
    87: "autochthon_right",
    88: "iliopsoas_left",
    89: "iliopsoas_right",
    90: "brain",
    91: "skull",
    92: "rib_left_1",
    93: "rib_left_2",
    94: "rib_left_3",
    95: "rib_left_4",
    96: "rib_left_5",
    97: "rib_left_6",
    98: "rib_left_7",
    99: "rib_left_8",
    100: "rib_left_9",
    101: "rib_left_10",
    102: "rib_left_11",
    103: "rib_left_12",
    104: "rib_right_1",
    105: "rib_right_2",
    106: "rib_right_3",
    107: "rib_right_4",
    108: "rib_right_5",
    109: "rib_right_6",
    110: "rib_right_7",
    111: "rib_right_8",
    112: "rib_right_9",
    113: "rib_right_10",
    114: "rib_right_11",
    115: "rib_right_12",
    116: "sternum",
    117: "costal_cartilages",
}

#: Organ groups: a lesion type names a group; a base provides it if any member is present.
ORGAN_GROUPS: dict[str, tuple[str, ...]] = {
    "lung": (
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    ),
    "liver": ("liver",),
    "gallbladder": ("gallbladder",),
    "pancreas": ("pancreas",),
    "urinary_bladder": ("urinary_bladder",),
    "esophagus": ("esophagus",),
    "stomach": ("stomach",),
    "kidney": ("kidney_left", "kidney_right"),
    "colon": ("colon",),
    "vertebrae": tuple(
        f"vertebrae_{level}"
        for level in (
            [f"C{i}" for i in range(1, 8)]
            + [f"T{i}" for i in range(1, 13)]
            + [f"L{i}" for i in range(1, 6)]
            + ["S1"]
        )
    ),
    "spleen": ("spleen",),
}


def organ_group(name: str) -> str | None:
    """The group an organ label belongs to (``"kidney_left"`` -> ``"kidney"``), or None."""
    for group, members in ORGAN_GROUPS.items():
        if name in members:
            return group
    return None


def readable_organ(name: str) -> str:
    """A radiologist's wording of a label name: ``"kidney_right"`` -> ``"right kidney"``,
    ``"lung_upper_lobe_left"`` -> ``"left upper lobe"``, ``"vertebrae_L3"`` -> ``"L3 vertebra"``."""
    m = re.fullmatch(r"lung_(upper|middle|lower)_lobe_(left|right)", name)
    if m:
        return f"{m.group(2)} {m.group(1)} lobe"
    m = re.fullmatch(r"vertebrae_([CTLS]\d+)", name)
    if m:
        return f"{m.group(1)} vertebra"
    m = re.fullmatch(r"rib_(left|right)_(\d+)", name)
    if m:
        return f"{m.group(1)} rib {m.group(2)}"
    m = re.fullmatch(r"(.+)_(left|right)", name)
    if m:
        return f"{m.group(2)} {m.group(1).replace('_', ' ')}"
    return name.replace("_", " ")


def load_label_names(path: str | Path | None) -> dict[int, str]:
    """Read a label map description ``{"1": "spleen", ...}``; None gives TotalSegmentator ids.

    Raises:
        ValueError: naming the file, when it is not a JSON object of integer ids to names.
    """
    if path is None:
        return dict(TOTALSEGMENTATOR_TOTAL)
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the label map description: {err}") from err
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a JSON object {{\"id\": \"organ name\"}}")
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except ValueError as err:
        raise ValueError(f"{path}: label ids must be integers ({err})") from err


def name_to_id(label_names: Mapping[int, str]) -> dict[str, int]:
    """Invert an id -> name map."""
    return {name: idx for idx, name in label_names.items()}
