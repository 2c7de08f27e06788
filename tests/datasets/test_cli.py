"""The ``pasta`` command line: help texts, one-line errors with status 2, generate end to end."""

from __future__ import annotations

import gzip
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from datasets_pasta import cli
from datasets_pasta.cli import SUBCOMMANDS, Subcommand, main, register
from datasets_pasta.corpus import GenerationConfig, generate_corpus
from modeling_pasta.organs import TOTALSEGMENTATOR_TOTAL, name_to_id

IDS = name_to_id(TOTALSEGMENTATOR_TOTAL)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pasta generate: error: ") or lines[0].startswith("pasta push: error: ")
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0]


def write_base(folder: Path, *, organs: tuple[str, ...] = ("liver",)) -> Path:
    """A 16^3 CT at 4 mm with the given organs as blocks, beside its label map."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    ct = np.full((16, 16, 16), -100, np.int16)
    labels = np.zeros((16, 16, 16), np.uint8)
    for k, organ in enumerate(organs):
        labels[2 + 6 * k : 7 + 6 * k, 4:12, 4:12] = IDS[organ]
    ct[labels > 0] = 55
    nib.save(nib.Nifti1Image(ct, affine), str(folder / "case.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(folder / "case_organs.nii.gz"))
    return folder


def test_help_lists_the_subcommands(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0
    assert "generate" in out and "push" in out
    assert "synthetic tumor corpus" in out and "Hub dataset repo" in out


def test_generate_help_documents_every_option(capsys):
    status, out, _ = run(capsys, "generate", "--help")
    assert status == 0
    for option in (
        "--source",
        "--out",
        "--num-samples",
        "--seed",
        "--spacing",
        "--lesion-types",
        "--healthy-fraction",
        "--max-lesions",
        "--splits",
        "--samples-per-shard",
        "--num-shards",
        "--shard-index",
        "--workers",
        "--no-augment",
        "--pet",
        "--log-level",
    ):
        assert option in out
    assert "kidney_stone" in out and "train=0.9,test=0.1" in out


def test_push_help_and_arguments(capsys):
    status, out, _ = run(capsys, "push", "--help")
    assert status == 0 and "REPO_ID" in out and "--private" in out and "--token" in out
    status, _, err = run(capsys, "push", "only-out")
    assert status == 2 and "REPO_ID" in err  # argparse: a required argument is missing


def test_push_missing_folder_is_a_one_line_error(capsys, tmp_path):
    status, _, err = run(capsys, "push", str(tmp_path / "nope"), "me/corpus")
    assert status == 2
    assert_one_line_error(err, "pasta push: error:", "no such folder")


def test_missing_source_folder(capsys, tmp_path):
    missing = tmp_path / "no_such_folder"
    status, _, err = run(
        capsys, "generate", "--source", str(missing), "--out", str(tmp_path / "o"), "--num-samples", "2"
    )
    assert status == 2
    assert_one_line_error(err, str(missing), "not a folder of healthy bases")


def test_unknown_lesion_type_lists_the_valid_ones(capsys, tmp_path):
    status, _, err = run(
        capsys,
        "generate",
        "--source",
        "phantom",
        "--out",
        str(tmp_path / "o"),
        "--num-samples",
        "2",
        "--lesion-types",
        "liver_cyst,brain_tumor",
    )
    assert status == 2
    assert_one_line_error(err, "'brain_tumor'", "valid types:", "liver_cancer", "kidney_stone")
    assert not (tmp_path / "o").exists()


def test_corrupt_nifti(capsys, tmp_path):
    folder = write_base(tmp_path / "bases")
    data = (folder / "case.nii.gz").read_bytes()
    (folder / "case.nii.gz").write_bytes(gzip.compress(gzip.decompress(data)[:400]))  # header, no voxels
    status, _, err = run(
        capsys, "generate", "--source", str(folder), "--out", str(tmp_path / "o"), "--num-samples", "2"
    )
    assert status == 2
    assert_one_line_error(err, "case.nii.gz")


def test_missing_organ(capsys, tmp_path):
    folder = write_base(tmp_path / "bases", organs=("liver",))
    status, _, err = run(
        capsys,
        "generate",
        "--source",
        str(folder),
        "--out",
        str(tmp_path / "o"),
        "--num-samples",
        "2",
        "--spacing",
        "4",
        "--lesion-types",
        "kidney_cyst",
    )
    assert status == 2
    assert_one_line_error(err, "'kidney_cyst'", "'kidney'", "organs available: liver", "--source phantom")


def test_bad_splits_syntax(capsys, tmp_path):
    status, _, err = run(
        capsys,
        "generate",
        "--source",
        "phantom",
        "--out",
        str(tmp_path / "o"),
        "--num-samples",
        "2",
        "--splits",
        "train:0.9",
    )
    assert status == 2 and "train=0.9,test=0.1" in err


def test_generate_writes_what_the_library_writes(capsys, tmp_path):
    status, _, err = run(
        capsys,
        "generate",
        "--source",
        "phantom",
        "--out",
        str(tmp_path / "cli"),
        "--num-samples",
        "2",
        "--seed",
        "5",
        "--spacing",
        "10",
        "--lesion-types",
        "kidney_stone",
        "--healthy-fraction",
        "0",
        "--phases",
        "venous",
        "--no-progress",
        "--log-level",
        "WARNING",
    )
    assert status == 0, err
    config = GenerationConfig(
        out_dir=tmp_path / "api",
        num_samples=2,
        seed=5,
        spacing_mm=10.0,
        lesion_types=["kidney_stone"],
        healthy_fraction=0.0,
        phases=["venous"],
    )
    generate_corpus(config, progress=False)
    name = "train-00000-of-00001.parquet"
    assert (tmp_path / "cli" / "data" / name).read_bytes() == (tmp_path / "api" / "data" / name).read_bytes()
    assert (tmp_path / "cli" / "README.md").read_text() == (tmp_path / "api" / "README.md").read_text()


def _greet(args) -> int:
    if args.name == "nobody":
        raise LookupError(f"no one called {args.name!r}")
    sys.stdout.write(f"hello {args.name}\n")
    return 0


HELLO = Subcommand(
    name="hello",
    help="greet someone",
    description="A subcommand another package would declare as an entry point.",
    add_arguments=lambda parser: parser.add_argument("--name", required=True, help="who to greet"),
    run=_greet,
    input_errors=lambda: (LookupError,),
)


def test_registry_maps_names_to_commands():
    assert set(SUBCOMMANDS) >= {"generate", "push"}
    with pytest.raises(ValueError, match="already registered"):
        register(SUBCOMMANDS["push"])
    assert all(isinstance(c, Subcommand) for c in SUBCOMMANDS.values())


def test_other_packages_add_subcommands_by_entry_point(capsys, monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", dict(cli.SUBCOMMANDS))
    entry = EntryPoint(name="hello", value=f"{__name__}:HELLO", group=cli.ENTRY_POINT_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [entry] if group == cli.ENTRY_POINT_GROUP else [])
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "greet someone" in out and "generate" in out
    status, out, _ = run(capsys, "hello", "--name", "Ada")
    assert status == 0 and out == "hello Ada\n"
    status, _, err = run(capsys, "hello", "--name", "nobody")
    assert status == 2 and err == "pasta hello: error: no one called 'nobody'\n"
