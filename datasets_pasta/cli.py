"""The ``pasta`` command line: a thin front over the packages' public functions.

Each subcommand is a :class:`Subcommand` in :data:`SUBCOMMANDS`: its arguments, the one public
function it calls, and the exceptions that mean "bad input" (reported as a one-line
``pasta <name>: error: ...`` with exit status 2, no traceback). Heavy imports stay inside
``run`` so ``pasta --help`` is instant.

Adding a subcommand: modules of this package call :func:`register` here; packages that this one
must not import (``training/``, ``space/``) declare a :class:`Subcommand` object as an entry point
of group :data:`ENTRY_POINT_GROUP` in ``pyproject.toml``, e.g.
``[project.entry-points."pasta.subcommands"] train = "training.cli:TRAIN"``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Sequence

logger = logging.getLogger("pasta")
#: Loggers whose level ``--log-level`` sets (this project's packages and the CLI).
PACKAGE_LOGGERS = ("pasta", "datasets_pasta", "modeling_pasta", "training", "space")


@dataclass(frozen=True)
class Subcommand:
    """One ``pasta <name>`` command.

    Attributes:
        name: the word after ``pasta``.
        help: one line for ``pasta --help``.
        description: the paragraph of ``pasta <name> --help``.
        add_arguments: declares the subcommand's arguments on its parser.
        run: calls the public function with the parsed arguments; returns the exit status.
        input_errors: imports and returns the exception types that mean bad user input.
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    input_errors: Callable[[], tuple[type[BaseException], ...]]


SUBCOMMANDS: dict[str, Subcommand] = {}
#: Entry-point group through which other packages add subcommands.
ENTRY_POINT_GROUP = "pasta.subcommands"


def register(command: Subcommand) -> Subcommand:
    """Add a subcommand to ``pasta`` (names are unique)."""
    if command.name in SUBCOMMANDS:
        raise ValueError(f"pasta subcommand {command.name!r} is already registered")
    SUBCOMMANDS[command.name] = command
    return command


# --------------------------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------------------------


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _splits(text: str) -> dict[str, float]:
    splits: dict[str, float] = {}
    for item in _comma_list(text):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            splits[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected name=fraction pairs such as train=0.9,test=0.1; got {item!r}"
            ) from None
    return splits


def _fov(text: str) -> tuple[float, float, float]:
    try:
        values = [float(v) for v in _comma_list(text)]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected one or three positive sizes in mm (e.g. 320,240,400), got {text!r}")
    return tuple(values)


# --------------------------------------------------------------------------------------------
# pasta generate
# --------------------------------------------------------------------------------------------


def _add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    from modeling_pasta.report import LESION_TYPES, PHASES

    parser.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="phantom|DIR",
        help="healthy bases: 'phantom' (procedural phantom with every organ) or a folder of CTs "
        "<name>.nii.gz with label maps <name>_organs.nii.gz; repeat to combine sources",
    )
    parser.add_argument("--out", required=True, metavar="OUT", help="corpus folder (data/*.parquet and README.md)")
    parser.add_argument(
        "--num-samples", type=int, required=True, metavar="N", help="scans in this run, over all splits"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="run seed; same seed and settings give identical files (default: 0)"
    )
    parser.add_argument(
        "--spacing", type=float, default=1.5, metavar="MM", help="isotropic voxel size in mm (default: 1.5)"
    )
    parser.add_argument(
        "--lesion-types",
        type=_comma_list,
        default=None,
        metavar="T1,T2",
        help=f"lesion types to insert, round robin (default: all 15): {', '.join(LESION_TYPES)}",
    )
    parser.add_argument(
        "--healthy-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of lesion-free scans per split (default: 0.1)",
    )
    parser.add_argument("--max-lesions", type=int, default=1, metavar="K", help="up to K lesions per scan (default: 1)")
    parser.add_argument(
        "--splits",
        type=_splits,
        default={"train": 1.0},
        metavar="NAME=F,...",
        help="split fractions summing to 1, e.g. train=0.9,test=0.1 (default: train=1)",
    )
    parser.add_argument(
        "--samples-per-shard", type=int, default=32, metavar="M", help="rows per Parquet file (default: 32)"
    )
    parser.add_argument(
        "--num-shards",
        type=int,
        default=1,
        metavar="K",
        help="processes sharing the work, e.g. array jobs (default: 1); "
        "each builds the files whose index %% K == --shard-index",
    )
    parser.add_argument(
        "--shard-index", type=int, default=0, metavar="I", help="this process's index in [0, --num-shards) (default: 0)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="W", help="generating processes on this machine (default: 1)"
    )
    parser.add_argument(
        "--no-augment", action="store_true", help="use the bases as they are (no random affine/elastic deformation)"
    )
    parser.add_argument("--pet", action="store_true", help="also simulate an FDG PET (SUV) channel")
    parser.add_argument(
        "--phases",
        type=_comma_list,
        default=list(PHASES),
        metavar="P1,P2",
        help=f"contrast phases of the phantom bases (default: {','.join(PHASES)})",
    )
    parser.add_argument(
        "--phantom-fov-mm",
        type=_fov,
        default=None,
        metavar="X,Y,Z",
        help="field of view of the phantom bases in mm (default: the phantom's own)",
    )
    parser.add_argument(
        "--phantom-seed",
        type=int,
        default=0,
        metavar="S",
        help="first anatomy seed of the phantom bases; another value gives other phantom patients, "
        "e.g. for a held-out test split (default: 0)",
    )
    learned = parser.add_argument_group("learned synthesis (FreeTumor-style)")
    learned.add_argument(
        "--refiner",
        default=None,
        metavar="DIR",
        help="refine every drawn lesion with this trained refiner (training/train_refiner.py output)",
    )
    learned.add_argument(
        "--quality-control",
        action="store_true",
        help="keep a lesion only when a segmenter finds most of its voxels; rejected lesions are drawn again",
    )
    learned.add_argument(
        "--qc-model",
        default=None,
        metavar="DIR",
        help="QC segmenter: a segmentation checkpoint or pipeline folder (default: the shipped pasta-small)",
    )
    learned.add_argument(
        "--qc-threshold",
        type=float,
        default=0.7,
        metavar="F",
        help="least share of a lesion's voxels the QC segmenter must label as lesion (default: 0.7)",
    )
    learned.add_argument(
        "--qc-max-attempts",
        type=int,
        default=8,
        metavar="N",
        help="lesions drawn per requested lesion before the scan is redrawn with another seed (default: 8)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_generate(args: argparse.Namespace) -> int:
    from .corpus import GenerationConfig, generate_corpus

    config = GenerationConfig(
        out_dir=args.out,
        num_samples=args.num_samples,
        seed=args.seed,
        sources=args.source,
        spacing_mm=args.spacing,
        lesion_types=args.lesion_types,
        healthy_fraction=args.healthy_fraction,
        max_lesions=args.max_lesions,
        splits=args.splits,
        samples_per_shard=args.samples_per_shard,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        workers=args.workers,
        augment=not args.no_augment,
        with_pet=args.pet,
        phases=args.phases,
        phantom_field_of_view_mm=args.phantom_fov_mm,
        phantom_seed=args.phantom_seed,
        refiner=args.refiner,
        quality_control=args.quality_control,
        qc_model=args.qc_model,
        qc_threshold=args.qc_threshold,
        qc_max_attempts=args.qc_max_attempts,
    )
    summary = generate_corpus(config, progress=not args.no_progress)
    if "quality_control" in summary:
        qc = summary["quality_control"]
        logger.info(
            "quality control: %d lesion(s) kept after %d attempt(s), %d rejected (pass rate %s)",
            qc["lesions"],
            qc["attempts"],
            qc["rejected"],
            "n/a" if qc["pass_rate"] is None else f"{qc['pass_rate']:.0%}",
        )
    logger.info(
        "%s: wrote %d file(s) with %d scan(s) in %.1f s; %d file(s) already present; splits %s",
        summary["out_dir"],
        len(summary["files_written"]),
        summary["samples_written"],
        summary["seconds"],
        len(summary["files_skipped"]),
        summary["split_sizes"],
    )
    return 0


def _corpus_input_errors() -> tuple[type[BaseException], ...]:
    from modeling_pasta.image_io import ImageReadError

    from .bases import BaseError
    from .corpus import CorpusError

    return (CorpusError, BaseError, ImageReadError)


register(
    Subcommand(
        name="generate",
        help="generate a synthetic tumor corpus (Parquet shards + dataset card)",
        description="Insert synthetic lesions into healthy CT bases and write a Hub-ready corpus: "
        "OUT/data/<split>-XXXXX-of-YYYYY.parquet and OUT/README.md. Re-running the same command "
        "completes an interrupted run; existing files are kept.",
        add_arguments=_add_generate_arguments,
        run=_run_generate,
        input_errors=_corpus_input_errors,
    )
)


# --------------------------------------------------------------------------------------------
# pasta push
# --------------------------------------------------------------------------------------------


def _add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="corpus folder written by 'pasta generate'")
    parser.add_argument(
        "repo_id", metavar="REPO_ID", help="Hub dataset repo, e.g. your-name/pasta-gen-mini (created if needed)"
    )
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the saved login or $HF_TOKEN)")


def _run_push(args: argparse.Namespace) -> int:
    from .corpus import push_corpus

    url = push_corpus(args.out, args.repo_id, private=args.private, token=args.token)
    logger.info("pushed: %s", url)
    return 0


register(
    Subcommand(
        name="push",
        help="upload a corpus folder to a Hub dataset repo",
        description="Upload OUT/README.md and OUT/data/*.parquet to a Hugging Face dataset repo "
        "(created if needed); remote shards absent from OUT are deleted so the repo mirrors the folder.",
        add_arguments=_add_push_arguments,
        run=_run_push,
        input_errors=_corpus_input_errors,
    )
)


# --------------------------------------------------------------------------------------------
# pasta predict
# --------------------------------------------------------------------------------------------


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="a CT: NIfTI file, DICOM series folder or a zip of either; or a folder of such cases (batch)",
    )
    parser.add_argument(
        "--out", required=True, metavar="OUT", help="output folder (batch: one sub-folder per case)"
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="PASTA checkpoint or pipeline folder (default: $PASTA_MODEL, else the shipped checkpoints/pasta-small)",
    )
    parser.add_argument(
        "--allow-non-ct",
        action="store_true",
        help="process inputs that do not look like CT in HU (MRI, PET, label maps) with a warning instead of "
        "refusing them",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo cases already finished in OUT")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    results = predict(
        args.input,
        args.out,
        args.model,
        allow_non_ct=args.allow_non_ct,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        device=args.device,
    )
    failed = [r for r in results if r.error]
    done = [r for r in results if not r.error and not r.skipped]
    logger.info(
        "%s: %d case(s) predicted, %d already done, %d failed",
        args.out, len(done), sum(r.skipped for r in results), len(failed),
    )
    for result in failed:
        sys.stderr.write(f"pasta predict: error: {result.input}: {' '.join(result.error.split())}\n")
    return 1 if failed else 0


def _predict_input_errors() -> tuple[type[BaseException], ...]:
    from modeling_pasta.image_io import ImageReadError

    return (ImageReadError, FileNotFoundError)


register(
    Subcommand(
        name="predict",
        help="segment lesions and organs and write a report for a CT (or a folder of CTs)",
        description="Run the PASTA pipeline on a NIfTI file, a DICOM series (folder or zip) or a folder of "
        "cases. Writes, in the input's own geometry, lesion_mask.nii.gz and organ_map.nii.gz (plus DICOM SEG "
        "for DICOM input), report.json and report.txt, and lesions.csv. A batch re-run skips finished cases.",
        add_arguments=_add_predict_arguments,
        run=_run_predict,
        input_errors=_predict_input_errors,
    )
)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _load_entry_points() -> None:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in SUBCOMMANDS:
            continue
        try:
            command = entry.load()
        except Exception as err:  # a broken plugin must not take the other subcommands down
            logger.warning("pasta subcommand %r (%s) could not be loaded: %s", entry.name, entry.value, err)
            continue
        if not isinstance(command, Subcommand) or command.name != entry.name:
            logger.warning("entry point %r (%s) is not a Subcommand named %r", entry.name, entry.value, entry.name)
            continue
        register(command)


def build_parser() -> argparse.ArgumentParser:
    """The ``pasta`` parser with every registered subcommand (including entry points)."""
    _load_entry_points()
    parser = argparse.ArgumentParser(
        prog="pasta", description="PASTA on the Hub: synthetic pan-tumor CT corpus and CT foundation model tools."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: INFO)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS.values():
        sub = commands.add_parser(command.name, help=command.help, description=command.description, parents=[common])
        command.add_arguments(sub)
        sub.set_defaults(subcommand=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pasta`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Bad input ends with one line ``pasta <command>: error: <message>`` on stderr and status 2.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed by argparse
        return int(exit_.code or 0)
    command: Subcommand = args.subcommand
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # other libraries stay at WARNING
    for name in PACKAGE_LOGGERS:
        logging.getLogger(name).setLevel(args.log_level)
    try:
        return command.run(args)
    except command.input_errors() as err:
        message = " ".join(str(err).split())
        sys.stderr.write(f"pasta {command.name}: error: {message}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
