#!/usr/bin/env python
"""Score a PASTA checkpoint on corpus splits and print a per-lesion-type table.

    python training/evaluate.py --model checkpoints/pasta-small --corpus out/corpus_test:test \\
        --out results/pasta-small-test.json

``--model`` is a pipeline folder (``segmentation/``, ``classification/``, ``report_generation/``) or
one checkpoint. ``--corpus`` takes ``PATH_OR_REPO[:SPLIT]`` (default split ``test``) and may repeat;
the scans of all of them are pooled. What is measured: :mod:`datasets_pasta.evaluation`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from datasets_pasta.evaluation import evaluate_on_corpus, format_table, load_checkpoints

logger = logging.getLogger("pasta.evaluate")


def corpus_argument(value: str) -> tuple[str, str]:
    path, _, split = value.rpartition(":") if ":" in value and not Path(value).exists() else (value, "", "")
    return (path, split or "test")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python training/evaluate.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="pipeline folder or single checkpoint")
    parser.add_argument(
        "--corpus", required=True, action="append", type=corpus_argument, metavar="PATH[:SPLIT]",
        help="corpus folder or Hub repo id and split (default split: test); repeat to pool several",
    )
    parser.add_argument("--out", default=None, help="write the results (overall, per type, per scan) as JSON here")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N scans of each corpus split")
    parser.add_argument(
        "--sliding-window-overlap", type=float, default=None, help="override the processor's window overlap"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    pipeline = load_checkpoints(args.model, sliding_window_overlap=args.sliding_window_overlap)
    results = evaluate_on_corpus(pipeline, args.corpus, limit=args.limit, progress=not args.no_progress)
    results["checkpoint"] = args.model
    results["command"] = "python training/evaluate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        logger.info("wrote %s", out)
    sys.stdout.write(format_table(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
