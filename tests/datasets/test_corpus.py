"""The corpus engine: plan, shards, dataset card, reading back, determinism, resume, distribution."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from datasets import load_dataset

from datasets_pasta.bases import BaseError
from datasets_pasta.corpus import (
    CorpusError,
    GenerationConfig,
    corpus_features,
    decode_sample,
    generate_corpus,
    generation_command,
    load_bases,
    load_corpus,
    plan_corpus,
    plan_shards,
    sample_to_tensors,
    split_sizes,
)
from modeling_pasta.report import validate_report

TRAIN_FILES = ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
TEST_FILES = ["test-00000-of-00001.parquet"]
TYPES = ["liver_cyst", "kidney_stone", "lung_cancer"]


def tiny_config(out: Path, **changes) -> GenerationConfig:
    """6 phantom scans at 10 mm: train 4 (2 files), test 2 (1 file)."""
    config = GenerationConfig(
        out_dir=out,
        num_samples=6,
        seed=3,
        spacing_mm=10.0,
        lesion_types=TYPES,
        healthy_fraction=0.25,
        splits={"train": 2 / 3, "test": 1 / 3},
        samples_per_shard=2,
        phases=["venous"],
    )
    return replace(config, **changes)


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").iterdir())}


def front_matter(out: Path) -> dict:
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "out"
    summary = generate_corpus(tiny_config(out), progress=False)
    assert summary["files_written"] == TRAIN_FILES + TEST_FILES
    assert summary["samples_written"] == 6 and summary["files_skipped"] == []
    return out


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------


def test_split_sizes_round_by_largest_remainder():
    assert split_sizes(10, {"train": 0.9, "test": 0.1}) == {"train": 9, "test": 1}
    assert split_sizes(7, {"train": 0.5, "validation": 0.25, "test": 0.25}) == {"train": 3, "validation": 2, "test": 2}
    assert split_sizes(3, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}) == {"a": 1, "b": 1, "c": 1}


def test_plan_is_balanced_deterministic_and_stable(tmp_path):
    config = tiny_config(tmp_path, num_samples=40, healthy_fraction=0.1, splits={"train": 0.75, "test": 0.25})
    plan = plan_corpus(config)
    assert plan == plan_corpus(config)
    assert [p.index for p in plan] == list(range(40))
    assert [p.split for p in plan] == ["train"] * 30 + ["test"] * 10
    assert len({p.case_id for p in plan}) == 40 and len({p.seed for p in plan}) == 40
    train = [p for p in plan if p.split == "train"]
    assert sum(not p.lesion_types for p in train) == 3  # round(30 * 0.1)
    counts = Counter(p.lesion_types[0] for p in train if p.lesion_types)
    assert sorted(counts.values()) == [9, 9, 9]  # round robin over the 3 types
    assert plan[0].case_id == "train-000000-liver_cyst"
    # A different run seed changes the samples' seeds, not the assignment.
    other = plan_corpus(replace(config, seed=4))
    assert [p.case_id for p in other] == [p.case_id for p in plan]
    assert all(a.seed != b.seed for a, b in zip(plan, other, strict=True))


def test_plan_max_lesions_adds_fitting_types(tmp_path):
    plan = plan_corpus(tiny_config(tmp_path, num_samples=12, max_lesions=3, healthy_fraction=0.0))
    sizes = Counter(len(p.lesion_types) for p in plan)
    assert set(sizes) <= {1, 2, 3} and len(sizes) > 1
    assert all(t in TYPES for p in plan for t in p.lesion_types)


def test_shards_cover_the_plan_once(tmp_path):
    plan = plan_corpus(tiny_config(tmp_path, num_samples=7, samples_per_shard=3, splits={"train": 1.0}))
    shards = plan_shards(plan, 3)
    assert [s.filename for s in shards] == [f"train-{k:05d}-of-00003.parquet" for k in range(3)]
    assert [item for s in shards for item in s.samples] == plan


def test_missing_organ_names_the_type_the_organ_and_the_fix(real_ct_dir, tmp_path):
    config = GenerationConfig(
        out_dir=tmp_path,
        num_samples=2,
        sources=[str(real_ct_dir)],
        spacing_mm=6.0,
        lesion_types=["liver_cyst", "esophageal_cancer"],
    )
    with pytest.raises(BaseError) as err:
        plan_corpus(config)
    message = str(err.value)
    for part in (
        "esophageal_cancer",
        "'esophagus'",
        "abdomen_ct_small",
        "organs available:",
        "liver",
        "--source phantom",
    ):
        assert part in message


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"lesion_types": ["liver_cyst", "brain_tumor"]},
            r"unknown lesion type.*'brain_tumor'.*valid types: lung_cancer",
        ),
        ({"splits": {"train": 0.8}}, r"sum to 1"),
        ({"splits": {"train-a": 1.0}}, r"split name"),
        ({"shard_index": 2, "num_shards": 2}, r"shard_index"),
        ({"phases": ["portal"]}, r"phases"),
    ],
)
def test_bad_settings_are_refused(tmp_path, changes, match):
    with pytest.raises(CorpusError, match=match):
        tiny_config(tmp_path, **changes).validate()


# ---------------------------------------------------------------------------------------------
# Files and card
# ---------------------------------------------------------------------------------------------


def test_shard_names_and_rows(corpus):
    assert sorted(os.listdir(corpus / "data")) == sorted(TEST_FILES + TRAIN_FILES)
    rows = {name: pq.ParquetFile(corpus / "data" / name).metadata.num_rows for name in TRAIN_FILES + TEST_FILES}
    assert rows == {TRAIN_FILES[0]: 2, TRAIN_FILES[1]: 2, TEST_FILES[0]: 2}
    schema = pq.read_schema(corpus / "data" / TRAIN_FILES[0])
    assert schema.names == list(corpus_features())


def test_dataset_card_declares_configs_features_and_splits(corpus):
    card = front_matter(corpus)
    assert card["license"] == "apache-2.0"
    assert "image-segmentation" in card["task_categories"] and "medical" in card["tags"]
    assert card["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}],
        }
    ]
    info = card["dataset_info"]
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == {"train": 4, "test": 2}
    features = {f["name"]: f for f in info["features"]}
    assert list(features) == list(corpus_features())
    assert features["image"]["dtype"] == "nifti" and features["seed"]["dtype"] == "int64"
    assert features["lesion_types"]["list"] == "string" and features["affine"]["length"] == 16
    body = (corpus / "README.md").read_text()
    assert "pasta generate --source phantom" in body and "--num-samples 6 --seed 3" in body
    assert "| liver_cyst | liver | no |" in body and "phantom" in body and "Apache-2.0" in body


def raw_volume(out: Path, case_id: str, column: str) -> nib.Nifti1Image:
    """The stored NIfTI of one row, read with pyarrow + nibabel only."""
    for path in sorted((out / "data").glob("*.parquet")):
        table = pq.read_table(path, columns=["case_id", column]).to_pylist()
        for row in table:
            if row["case_id"] == case_id:
                return nib.Nifti1Image.from_bytes(row[column]["bytes"])
    raise KeyError(case_id)


def check_row(out: Path, row: dict) -> None:
    affine = np.asarray(row["affine"]).reshape(4, 4)
    for column in ("image", "lesion_mask", "organ_map"):
        stored = raw_volume(out, row["case_id"], column)
        decoded = row[column]
        assert decoded.shape == stored.shape
        np.testing.assert_array_equal(np.asarray(decoded.dataobj), np.asarray(stored.dataobj))
        np.testing.assert_allclose(decoded.affine, affine)
    np.testing.assert_allclose(row["spacing_mm"], [10.0, 10.0, 10.0])
    assert row["pet"] is None
    report = validate_report(json.loads(row["report"]))
    assert [lesion.type for lesion in report.lesions] == row["lesion_types"]
    mask = np.asarray(row["lesion_mask"].dataobj)
    assert sorted(int(v) for v in np.unique(mask) if v) == [lesion.id for lesion in report.lesions]
    assert row["report_text"] and row["phase"] == "venous" and row["base_id"].startswith("phantom")


def test_streaming_load_decodes_volumes_with_their_affine(corpus):
    rows = list(load_dataset(str(corpus), split="train", streaming=True))  # the Hub layout alone
    assert [r["case_id"] for r in rows] == [
        "train-000000-liver_cyst",
        "train-000001-healthy",
        "train-000002-kidney_stone",
        "train-000003-lung_cancer",
    ]
    for row in rows:
        check_row(corpus, row)


def test_map_style_load_reads_the_same_rows(corpus, tmp_path):
    dataset = load_corpus(str(corpus), split="test", streaming=False, cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == 2
    for row in dataset:
        check_row(corpus, row)


def test_decode_sample_without_nifti_decoding_and_tensors(corpus):
    decoded_row = next(iter(load_corpus(str(corpus), split="train")))
    raw_row = next(iter(load_corpus(str(corpus), split="train", decode=False)))
    assert isinstance(raw_row["image"], dict) and isinstance(raw_row["image"]["bytes"], bytes)
    a, b = decode_sample(decoded_row), decode_sample(raw_row)
    assert a.ct_hu.dtype == np.int16 and a.lesion_mask.dtype == np.uint8 and a.organ_map.dtype == np.uint8
    np.testing.assert_array_equal(a.ct_hu, b.ct_hu)
    np.testing.assert_array_equal(a.lesion_mask, b.lesion_mask)
    assert a.report == b.report and a.lesion_types == ["liver_cyst"]
    tensors = sample_to_tensors(raw_row)
    assert tensors["image"].dtype == torch.float32 and tensors["image"].shape == (1, *a.ct_hu.shape)
    assert tensors["lesion_mask"].dtype == torch.int64 and tensors["organ_map"].shape == a.ct_hu.shape
    assert torch.equal(tensors["image"][0], torch.from_numpy(a.ct_hu.astype(np.float32)))
    assert "pet" not in tensors
    with pytest.raises(CorpusError, match="--pet"):
        sample_to_tensors(a, with_pet=True)


@pytest.mark.parametrize("split, size", [("train", 4), ("test", 2)])  # 2 files: by shard; 1 file: by row
def test_split_by_node_gives_disjoint_parts(corpus, split, size):
    everything = {r["case_id"] for r in load_corpus(str(corpus), split=split, decode=False)}
    parts = [
        [r["case_id"] for r in load_corpus(str(corpus), split=split, rank=rank, world_size=2, decode=False)]
        for rank in range(2)
    ]
    assert all(parts) and not set(parts[0]) & set(parts[1])
    assert set(parts[0]) | set(parts[1]) == everything and len(everything) == size


# ---------------------------------------------------------------------------------------------
# Determinism, resume, distribution
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(corpus, tmp_path):
    generate_corpus(tiny_config(tmp_path / "again"), progress=False)
    assert files_of(tmp_path / "again") == files_of(corpus)
    assert (tmp_path / "again" / "README.md").read_bytes() == (corpus / "README.md").read_bytes()


def test_resume_rebuilds_only_the_missing_file(corpus, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(corpus, out)
    data = out / "data"
    (data / TRAIN_FILES[1]).unlink()
    (data / f".{TRAIN_FILES[1]}.tmp").write_bytes(b"half-written shard of an interrupted run")
    old = time.time() - 1000
    for name in (TRAIN_FILES[0], TEST_FILES[0]):
        os.utime(data / name, (old, old))
    summary = generate_corpus(tiny_config(out), progress=False)
    assert summary["files_written"] == [TRAIN_FILES[1]]
    assert summary["files_skipped"] == [TRAIN_FILES[0], TEST_FILES[0]]
    assert files_of(out) == files_of(corpus)  # the temp file is gone, the shard is back, identical
    assert all((data / name).stat().st_mtime == old for name in (TRAIN_FILES[0], TEST_FILES[0]))
    case_ids = [r["case_id"] for r in load_corpus(str(out), split="train", decode=False)]
    assert len(case_ids) == len(set(case_ids)) == 4


def test_two_partial_runs_equal_one_full_run(corpus, tmp_path):
    out = tmp_path / "parts"
    first = generate_corpus(tiny_config(out, num_shards=2, shard_index=0), progress=False)
    assert first["files_written"] == [TRAIN_FILES[0], TEST_FILES[0]]  # global files 0 and 2
    assert "incomplete: 1 of 2" in (out / "README.md").read_text()
    second = generate_corpus(tiny_config(out, num_shards=2, shard_index=1), progress=False)
    assert second["files_written"] == [TRAIN_FILES[1]]
    assert files_of(out) == files_of(corpus)
    assert (out / "README.md").read_bytes() == (corpus / "README.md").read_bytes()


def test_rerun_with_other_settings_is_refused(corpus, tmp_path):
    out = tmp_path / "conflict"
    shutil.copytree(corpus, out)
    with pytest.raises(CorpusError, match=r"other settings \(differing: seed\)"):
        generate_corpus(tiny_config(out, seed=4), progress=False)
    with pytest.raises(CorpusError, match="different run of split 'train'"):
        generate_corpus(tiny_config(out, samples_per_shard=4), progress=False)


def test_second_run_adds_a_split_to_the_same_folder(corpus, tmp_path):
    out = tmp_path / "two_runs"
    shutil.copytree(corpus, out)
    generate_corpus(
        tiny_config(out, num_samples=2, seed=9, splits={"validation": 1.0}, lesion_types=["kidney_cyst"]),
        progress=False,
    )
    card = front_matter(out)
    assert {s["name"]: s["num_examples"] for s in card["dataset_info"]["splits"]} == {
        "train": 4,
        "validation": 2,
        "test": 2,
    }
    body = (out / "README.md").read_text()
    assert body.count("pasta generate --source phantom") == 2 and "--seed 9" in body
    rows = list(load_corpus(str(out), split="validation", decode=False))
    assert [r["case_id"] for r in rows] == ["validation-000000-kidney_cyst", "validation-000001-healthy"]


def test_real_bases_are_attributed(real_ct_dir, tmp_path):
    out = tmp_path / "real"
    config = GenerationConfig(
        out_dir=out,
        num_samples=2,
        seed=1,
        sources=[str(real_ct_dir)],
        spacing_mm=6.0,
        lesion_types=["liver_cyst"],
        healthy_fraction=0.0,
        augment=False,
    )
    generate_corpus(config, progress=False)
    row = next(iter(load_corpus(str(out), split="train")))
    assert row["base_id"] in {"abdomen_ct", "abdomen_ct_small"}
    assert validate_report(json.loads(row["report"])).lesions[0].organ == "liver"
    body = (out / "README.md").read_text()
    assert front_matter(out)["license"] == "apache-2.0"
    assert "TotalSegmentator" in body and f"--source {real_ct_dir.name}" in body


def test_pet_column_when_asked_for(tmp_path):
    out = tmp_path / "pet"
    generate_corpus(tiny_config(out, num_samples=2, splits={"train": 1.0}, with_pet=True), progress=False)
    assert "pet" in front_matter(out)["tags"] and "--pet" in (out / "README.md").read_text()
    rows = list(load_corpus(str(out), split="train", decode=False))
    for row in rows:
        sample = decode_sample(row)
        assert sample.pet_suv.dtype == np.float32 and sample.pet_suv.shape == sample.ct_hu.shape
        assert sample.pet_suv.min() >= 0 and sample.pet_suv.max() > 0
        assert sample.report.modality == "PET/CT"
        tensors = sample_to_tensors(sample, with_pet=True)
        assert tensors["pet"].shape == (1, *sample.ct_hu.shape) and tensors["pet"].dtype == torch.float32


def test_two_workers_write_the_same_bytes_as_one(corpus, tmp_path):
    generate_corpus(tiny_config(tmp_path / "w2", workers=2), progress=False)
    assert files_of(tmp_path / "w2") == files_of(corpus)


def test_phantom_seed_gives_other_phantom_patients_and_is_recorded(tmp_path):
    default = tiny_config(tmp_path / "a")
    other = tiny_config(tmp_path / "b", phantom_seed=100)
    assert {b.base_id for b in load_bases(default)} == {"phantom-8", "phantom-9", "phantom-10", "phantom-11"}
    assert {b.base_id for b in load_bases(other)} == {"phantom-108", "phantom-109", "phantom-110", "phantom-111"}
    assert "phantom_seed" not in default.generation_settings()  # corpora written before the option stay resumable
    assert other.generation_settings()["phantom_seed"] == 100
    assert "--phantom-seed 100" in generation_command(other.generation_settings())
    with pytest.raises(CorpusError, match="phantom_seed"):
        tiny_config(tmp_path / "c", phantom_seed=-1).validate()
