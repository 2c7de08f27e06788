"""Free-text reports rendered from a structured report, with varied phrasing.

The report decoder learns from these texts, so the same content is worded many ways: sentence
order, synonyms, units and number formats vary with the sample's random generator, while every
fact comes from the structured report (itself measured from the voxels). The canonical,
fixed-wording impression is :func:`modeling_pasta.report.render_impression`.
"""

from __future__ import annotations

import numpy as np

from modeling_pasta.report import LESION_TYPES, LesionReport, StructuredReport

_NOUN = {
    "lung_cancer": ("nodule", "mass", "pulmonary lesion"),
    "liver_cyst": ("cyst", "cystic lesion", "fluid-attenuation lesion"),
    "pancreatic_cyst": ("cyst", "cystic lesion", "cystic focus"),
    "kidney_cyst": ("cyst", "cystic lesion", "renal cyst"),
    "kidney_stone": ("stone", "calculus", "calcified focus"),
    "gallstone": ("gallstone", "calculus", "stone"),
    "bone_metastasis": ("osseous lesion", "bone lesion", "focal bone lesion"),
}
_DEFAULT_NOUN = ("lesion", "mass", "focal lesion")

_DENSITY = {
    "hypodense": ("hypodense", "low-attenuation", "hypoattenuating"),
    "isodense": ("isodense", "isoattenuating", "similar-attenuation"),
    "hyperdense": ("hyperdense", "high-attenuation", "hyperattenuating"),
}
_VARIATION = {
    "homogeneous": ("homogeneous", "uniform", "homogeneously attenuating"),
    "heterogeneous": ("heterogeneous", "inhomogeneous", "heterogeneously attenuating"),
}
_MARGIN = {
    "well_defined": ("well-defined margins", "sharp margins", "a well-circumscribed border"),
    "ill_defined": ("ill-defined margins", "indistinct margins", "poorly defined borders"),
    "lobulated": ("lobulated margins", "a lobulated contour", "lobulated borders"),
    "spiculated": ("spiculated margins", "spiculated borders", "a spiculated contour"),
}
_SHAPE = {
    "round": ("round", "rounded", "spherical"),
    "oval": ("oval", "ovoid", "elliptical"),
    "lobulated": ("lobulated", "multilobulated", "lobular"),
    "irregular": ("irregular", "irregularly shaped", "irregular"),
}
_ENHANCEMENT = {
    "none": ("no enhancement", "no appreciable enhancement", "no internal enhancement"),
    "mild": ("mild enhancement", "slight enhancement", "mild contrast uptake"),
    "marked": ("marked enhancement", "avid enhancement", "strong enhancement"),
    "rim": ("rim enhancement", "peripheral rim enhancement", "a rim-enhancing wall"),
    "arterial_washout": (
        "arterial phase hyperenhancement with washout",
        "arterial hyperenhancement and portal venous washout",
        "hyperenhancement followed by washout",
    ),
}
_TEXTURE = {
    "solid": ("solid", "solid", "soft-tissue"),
    "part_solid": ("part-solid", "part-solid", "mixed solid and ground-glass"),
    "ground_glass": ("ground-glass", "pure ground-glass", "ground-glass"),
    "cystic": ("cystic", "fluid-density", "cystic"),
    "calcified": ("calcified", "densely calcified", "calcific"),
}
_FEATURE = {
    "necrosis": ("central necrosis", "a necrotic core", "internal necrosis"),
    "calcification": ("calcification", "internal calcification", "calcific foci"),
    "cystic_change": ("cystic change", "cystic components", "cystic degeneration"),
    "fat": ("internal fat", "fat content", "macroscopic fat"),
    "air": ("internal air", "gas", "air content"),
    "capsule": ("a capsule", "a pseudocapsule", "a peripheral capsule"),
    "wall_thickening": ("wall thickening", "mural thickening", "thickening of the wall"),
    "intraluminal_mass": ("an intraluminal component", "intraluminal growth", "a polypoid intraluminal component"),
    "luminal_narrowing": ("luminal narrowing", "narrowing of the lumen", "luminal compromise"),
    "exophytic": ("an exophytic component", "exophytic growth", "an exophytic contour"),
    "lytic": ("lytic destruction", "osteolysis", "lytic change"),
    "blastic": ("sclerosis", "osteoblastic change", "blastic change"),
    "cortical_breach": ("cortical breach", "cortical disruption", "cortical destruction"),
    "layering": ("dependent layering", "layering in the dependent portion", "dependent position"),
}
_NEGATIVE = (
    "No focal lesion is identified.",
    "No suspicious mass or focal abnormality is seen.",
    "The solid and hollow organs show no focal lesion.",
    "No evidence of a focal mass.",
)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _size_phrase(lesion: LesionReport, rng: np.random.Generator) -> str:
    a, b, c = lesion.size_mm
    style = int(rng.integers(4))
    if style == 0:
        return f"{a:.0f} x {b:.0f} x {c:.0f} mm"
    if style == 1:
        return f"{a / 10:.1f} x {b / 10:.1f} x {c / 10:.1f} cm"
    if style == 2:
        return f"{a:.0f} x {b:.0f} mm"
    return f"up to {a:.0f} mm"


def _relation_phrase(lesion: LesionReport, rng: np.random.Generator) -> str:
    organs = ", ".join(lesion.adjacent_organs[:3])
    if lesion.relation_to_adjacent == "invading":
        return _pick(rng, (f"It invades the {organs}.", f"There is invasion of the {organs}.",
                           f"The lesion extends into the {organs}."))
    if lesion.relation_to_adjacent == "abutting":
        return _pick(rng, (f"It abuts the {organs} without invasion.", f"It is in contact with the {organs}.",
                           f"The lesion abuts the {organs}; fat planes are preserved."))
    return _pick(rng, ("Adjacent structures are clear.", "No invasion of adjacent organs.",
                       "Fat planes to neighbouring organs are preserved."))


def describe_lesion(lesion: LesionReport, rng: np.random.Generator) -> str:
    """One paragraph for one lesion; every fact from ``lesion``, wording drawn from ``rng``."""
    noun = _pick(rng, _NOUN.get(lesion.type, _DEFAULT_NOUN))
    density = _pick(rng, _DENSITY[lesion.density])
    variation = _pick(rng, _VARIATION[lesion.density_variation])
    size = _size_phrase(lesion, rng)
    where = lesion.location
    opening = _pick(
        rng,
        (
            f"There is a {size} {variation} {density} {noun} in the {where}.",
            f"A {density}, {variation} {noun} measuring {size} is seen in the {where}.",
            f"In the {where}, a {variation} {density} {noun} measures {size}.",
            f"{noun.capitalize()} in the {where}: {size}, {density} and {variation}.",
        ),
    )
    details = [
        _pick(rng, (f"It is {_pick(rng, _SHAPE[lesion.shape])} with {_pick(rng, _MARGIN[lesion.margin])}.",
                    f"Shape {_pick(rng, _SHAPE[lesion.shape])}, {_pick(rng, _MARGIN[lesion.margin])}.")),
        _pick(rng, (f"Mean attenuation {lesion.mean_hu:.0f} HU.", f"It measures {lesion.mean_hu:.0f} HU on average.",
                    f"Average density is {lesion.mean_hu:.0f} HU.")),
        _pick(rng, (f"The lesion is {_pick(rng, _TEXTURE[lesion.texture])} and shows "
                    f"{_pick(rng, _ENHANCEMENT[lesion.enhancement])}.",
                    f"Texture {_pick(rng, _TEXTURE[lesion.texture])}; {_pick(rng, _ENHANCEMENT[lesion.enhancement])}.")),
        _relation_phrase(lesion, rng),
    ]
    if lesion.special_features:
        features = [_pick(rng, _FEATURE[f]) for f in lesion.special_features]
        listed = features[0] if len(features) == 1 else ", ".join(features[:-1]) + " and " + features[-1]
        details.append(_pick(rng, (f"Note is made of {listed}.", f"There is {listed}.", f"Features: {listed}.")))
    if rng.random() < 0.5:
        details.append(_pick(rng, (f"Volume approximately {lesion.volume_ml:.1f} ml.",
                                   f"Estimated volume {lesion.volume_ml:.1f} mL.")))
    order = rng.permutation(len(details))
    return " ".join([opening, *(details[i] for i in order)])


def _impression_sentence(lesion: LesionReport, rng: np.random.Generator) -> str:
    info = LESION_TYPES[lesion.type]
    if info.malignant:
        verdict = _pick(rng, ("suspicious for", "highly suggestive of", "consistent with", "compatible with"))
    else:
        verdict = _pick(rng, ("consistent with", "in keeping with", "compatible with", "most likely"))
    return f"{lesion.location.capitalize()} lesion ({lesion.size_mm[0]:.0f} mm), {verdict} {info.readable}."


def render_report_text(report: StructuredReport, rng: np.random.Generator) -> str:
    """A free-text CT report (findings + impression) with phrasing drawn from ``rng``."""
    phase_word = {"plain": "non-contrast", "arterial": "arterial phase", "venous": "portal venous phase"}[report.phase]
    header = _pick(rng, (f"Technique: {phase_word} CT.", f"{phase_word.capitalize()} CT of the chest and abdomen.",
                         f"CT, {phase_word}."))
    if not report.lesions:
        findings = _pick(rng, _NEGATIVE)
        impression = _pick(rng, ("No focal lesion.", "Unremarkable study with no focal lesion.", "No tumor detected."))
    else:
        order = rng.permutation(len(report.lesions)) if rng.random() < 0.3 else np.arange(len(report.lesions))
        findings = " ".join(describe_lesion(report.lesions[i], rng) for i in order)
        impression = " ".join(_impression_sentence(lesion, rng) for lesion in report.lesions)
    findings_head = _pick(rng, ("FINDINGS:", "Findings:", "FINDINGS -"))
    impression_head = _pick(rng, ("IMPRESSION:", "Impression:", "CONCLUSION:"))
    return f"{header}\n{findings_head} {findings}\n{impression_head} {impression}"
