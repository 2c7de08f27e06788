"""Reports in the written corpus equal an independent measurement of the saved voxels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets_pasta.corpus import GenerationConfig, decode_sample, generate_corpus, load_corpus
from datasets_pasta.phantom import make_phantom
from datasets_pasta.sample import generate_sample
from modeling_pasta.organs import ORGAN_GROUPS, name_to_id
from modeling_pasta.report import ISODENSE_HU, LESION_TYPES, validate_report


def independent_diameters(mask: np.ndarray, affine: np.ndarray) -> list[float]:
    """Principal-axis extents by SVD (not eigh), plus one voxel box projected on each axis."""
    world = np.argwhere(mask) @ affine[:3, :3].T
    centred = world - world.mean(axis=0)
    vt = np.linalg.svd(centred, full_matrices=True)[2] if len(world) >= 3 else np.eye(3)
    proj = centred @ vt.T
    box = np.abs(vt @ affine[:3, :3]).sum(axis=1)
    return sorted((proj.max(axis=0) - proj.min(axis=0) + box).tolist(), reverse=True)


def check_report_against_voxels(sample) -> None:
    report = validate_report(sample.report.to_dict())
    ids = sorted(int(i) for i in np.unique(sample.lesion_mask) if i)
    assert ids == [lesion.id for lesion in report.lesions]
    voxel_ml = abs(np.linalg.det(sample.affine[:3, :3])) / 1000.0
    for lesion in report.lesions:
        mask = sample.lesion_mask == lesion.id
        assert lesion.type == sample.lesion_types[lesion.id - 1]
        assert lesion.organ == LESION_TYPES[lesion.type].organ
        assert lesion.volume_ml == pytest.approx(mask.sum() * voxel_ml, abs=1e-3)
        assert lesion.mean_hu == pytest.approx(float(sample.ct_hu[mask].mean()), abs=0.051)
        assert lesion.size_mm == pytest.approx(independent_diameters(mask, sample.affine), abs=0.06)


def test_generated_sample_report_matches_voxels_on_the_phantom():
    base = make_phantom(spacing_mm=4.0, seed=2, phase="arterial")
    for i, lesion_type in enumerate(["liver_cancer", "kidney_cyst", "lung_cancer", "esophageal_cancer"]):
        sample = generate_sample(base, [lesion_type], seed=100 + i, case_id=f"t{i}")
        check_report_against_voxels(sample)
        lesion = sample.report.lesions[0]
        # Density against the host organ's own mean HU outside the lesion, computed here.
        by_name = name_to_id(base.label_names)
        host_ids = [by_name[n] for n in ORGAN_GROUPS[lesion.organ] if n in by_name]
        mask = sample.lesion_mask == 1
        labels, counts = np.unique(sample.organ_map[mask], return_counts=True)
        host = max((c, l) for l, c in zip(labels, counts) if l in host_ids)[1]
        organ_mean = float(sample.ct_hu[(sample.organ_map == host) & ~mask].mean())
        diff = lesion.mean_hu - organ_mean
        expected = "isodense" if abs(diff) <= ISODENSE_HU else ("hyperdense" if diff > 0 else "hypodense")
        assert lesion.density == expected


def test_healthy_sample_has_empty_report():
    base = make_phantom(spacing_mm=6.0, seed=0)
    sample = generate_sample(base, [], seed=1, case_id="h")
    assert not sample.lesion_mask.any() and sample.report.lesions == []
    assert sample.report.impression == "No focal lesion identified."


def test_unknown_type_lists_valid_ones():
    base = make_phantom(spacing_mm=6.0, seed=0)
    with pytest.raises(ValueError, match="unknown lesion type.*brain_tumor.*valid types: lung_cancer"):
        generate_sample(base, ["brain_tumor"], seed=0, case_id="x")


@pytest.mark.real_data
def test_corpus_on_real_base_reports_match_saved_voxels(real_ct_dir, tmp_path):
    types = ["liver_cancer", "kidney_stone", "pancreatic_cyst", "bone_metastasis", "gastric_cancer"]
    config = GenerationConfig(
        out_dir=tmp_path / "corpus", num_samples=6, seed=3, sources=[str(real_ct_dir)], spacing_mm=4.0,
        lesion_types=types, healthy_fraction=1 / 6, samples_per_shard=6,
    )
    generate_corpus(config, progress=False)
    rows = list(load_corpus(str(config.out_dir), split="train", streaming=True))
    assert len(rows) == 6
    seen = set()
    for row in rows:
        sample = decode_sample(row)
        check_report_against_voxels(sample)
        assert json.loads(row["report"]) == sample.report.to_dict()
        assert row["base_id"] in {"abdomen_ct", "abdomen_ct_small"}
        seen.update(sample.lesion_types)
    assert seen == set(types)
