"""The PASTA-Gen corpus: planning, writing Parquet shards with a dataset card, and reading them back.

A corpus folder is a Hub dataset repository as is::

    OUT/README.md                                   dataset card (YAML: configs, features, splits)
    OUT/data/<split>-00000-of-00003.parquet         zstd-compressed shards, rows in sample order

Columns follow ``REPORT_SCHEMA.md`` ("Corpus record"); the volumes (``image``, ``lesion_mask``,
``organ_map``, ``pet``) are uncompressed NIfTI-1 bytes stored with the ``datasets.Nifti``
feature, so each keeps its affine and ``load_dataset(OUT)`` decodes them to nibabel images.
:func:`decode_sample` reads a row without relying on that (experimental) decoding.

Writing is planned up front so that any process can build any output file on its own:

- sample ``i`` gets its split (contiguous blocks, largest-remainder rounding of the fractions),
  its lesion types (round robin over the requested types within the split, with an evenly
  spread ``healthy_fraction`` of lesion-free scans), its own seed (``SeedSequence((seed, i))``),
  a healthy base that has the organs its lesions need, and a ``case_id`` stable across re-runs;
- a split's samples are cut into shards of ``samples_per_shard``; output file ``g`` (in split
  order) is built by the process whose ``shard_index == g % num_shards``;
- each file is written to a hidden temporary file beside it, flushed to disk and renamed, so a
  file that exists is complete; a re-run skips existing files and builds the rest. The same
  configuration gives byte-identical files, whichever process or worker count builds them.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import multiprocessing
import os
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np

from modeling_pasta.organs import ORGAN_GROUPS
from modeling_pasta.report import LESION_TYPES, PHASES, StructuredReport

from .bases import BaseError, HealthyBase, augment_anatomy, load_base_dir, resample_base
from .sample import CorpusSample, generate_sample
from .synthesis import LesionQualityControl, LesionRefiner, LesionSynthesis, QualityControlSummary

logger = logging.getLogger(__name__)

#: Columns holding volumes, stored with the ``datasets.Nifti`` feature.
NIFTI_COLUMNS = ("image", "lesion_mask", "organ_map", "pet")
#: Scanner noise levels (HU) of the ``phantom`` source's pool: one phantom per (phase, level).
PHANTOM_NOISE_HU = (9.0, 12.0, 15.0, 18.0)
#: Seeds tried per sample before a lesion placement failure stops the run.
SAMPLE_ATTEMPTS = 3
#: Key of the generation settings in each shard's Parquet key-value metadata.
GENERATION_METADATA_KEY = b"pasta_generation"

SHARD_NAME = re.compile(r"^(?P<split>\w+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")
SPLIT_NAME = re.compile(r"^[A-Za-z0-9]\w*$")

#: Real bases whose license and origin are known (base_id -> attribution).
KNOWN_BASES = {
    "abdomen_ct": "TotalSegmentator test files (wasserth/TotalSegmentator, Apache-2.0)",
    "abdomen_ct_small": "TotalSegmentator test files (wasserth/TotalSegmentator, Apache-2.0)",
}


class CorpusError(ValueError):
    """A corpus request that cannot be carried out (bad settings, conflicting files on disk)."""


def corpus_features():
    """The ``datasets.Features`` of a corpus row (column meanings: ``REPORT_SCHEMA.md``)."""
    from datasets import Features, List, Nifti, Value

    return Features(
        {
            "case_id": Value("string"),
            "image": Nifti(),
            "lesion_mask": Nifti(),
            "organ_map": Nifti(),
            "pet": Nifti(),
            "lesion_types": List(Value("string")),
            "phase": Value("string"),
            "spacing_mm": List(Value("float64"), length=3),
            "affine": List(Value("float64"), length=16),
            "report": Value("string"),
            "report_text": Value("string"),
            "base_id": Value("string"),
            "seed": Value("int64"),
        }
    )


# --------------------------------------------------------------------------------------------
# Configuration and plan
# --------------------------------------------------------------------------------------------


@dataclass
class GenerationConfig:
    """What to generate and where (one ``pasta generate`` call).

    Attributes:
        out_dir: the corpus folder (``data/`` shards and ``README.md`` go there).
        num_samples: scans in this run, over all its splits.
        seed: the run's seed; sample ``i`` gets its own seed from ``(seed, i)``.
        sources: ``"phantom"`` and/or folders of healthy bases (see :mod:`datasets_pasta.bases`).
        spacing_mm: isotropic voxel size (mm) every base is resampled to.
        lesion_types: types to insert (keys of ``LESION_TYPES``); None = all 15.
        healthy_fraction: share of lesion-free scans in each split.
        max_lesions: lesions per non-healthy scan, from 1 to this (extra ones of any requested
            type whose organ the base has).
        splits: split name -> fraction of ``num_samples`` (fractions sum to 1).
        samples_per_shard: rows per Parquet file.
        num_shards: processes sharing the work (e.g. array jobs on several machines).
        shard_index: this process builds the output files whose global index
            ``% num_shards == shard_index``.
        workers: processes generating samples on this machine.
        augment: deform each base randomly (affine + elastic) per sample.
        with_pet: also simulate an FDG PET (SUV) channel.
        phases: contrast phases of the phantom bases.
        phantom_field_of_view_mm: field of view of the phantom bases (None = the phantom's default).
        phantom_seed: first anatomy seed of the phantom bases; another value gives other phantom
            patients (e.g. a test split whose bases no training scan used).
        refiner: folder of a trained lesion refiner (``training/train_refiner.py``); each drawn
            lesion is refined by it (:mod:`datasets_pasta.synthesis`).
        quality_control: keep a lesion only when a segmenter labels at least ``qc_threshold``
            of its voxels as lesion; rejected lesions are drawn again (``qc_max_attempts``).
        qc_model: the QC segmenter (a segmentation checkpoint or pipeline folder); None = the
            shipped ``checkpoints/pasta-small``.
    """

    out_dir: Path
    num_samples: int
    seed: int = 0
    sources: list[str] = field(default_factory=lambda: ["phantom"])
    spacing_mm: float = 1.5
    lesion_types: list[str] | None = None
    healthy_fraction: float = 0.1
    max_lesions: int = 1
    splits: dict[str, float] = field(default_factory=lambda: {"train": 1.0})
    samples_per_shard: int = 32
    num_shards: int = 1
    shard_index: int = 0
    workers: int = 1
    augment: bool = True
    with_pet: bool = False
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    phantom_field_of_view_mm: tuple[float, float, float] | None = None
    phantom_seed: int = 0
    refiner: str | None = None
    quality_control: bool = False
    qc_model: str | None = None
    qc_threshold: float = 0.7
    qc_max_attempts: int = 8

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)

    @property
    def resolved_lesion_types(self) -> list[str]:
        return list(LESION_TYPES) if self.lesion_types is None else list(self.lesion_types)

    def validate(self) -> None:
        """Raise :class:`CorpusError` naming the first setting that cannot work."""
        if self.num_samples < 1:
            raise CorpusError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.seed < 0:
            raise CorpusError(f"seed must be a non-negative integer, got {self.seed}")
        if not self.sources:
            raise CorpusError("no source of healthy bases: pass 'phantom' and/or a folder")
        if not self.spacing_mm > 0:
            raise CorpusError(f"spacing_mm must be positive, got {self.spacing_mm}")
        unknown = [t for t in self.resolved_lesion_types if t not in LESION_TYPES]
        if unknown:
            raise CorpusError(
                f"unknown lesion type(s) {', '.join(map(repr, unknown))}; valid types: {', '.join(LESION_TYPES)}"
            )
        if not self.resolved_lesion_types and self.healthy_fraction < 1:
            raise CorpusError("no lesion types given; pass at least one (or healthy_fraction=1)")
        if not 0 <= self.healthy_fraction <= 1:
            raise CorpusError(f"healthy_fraction must be in [0, 1], got {self.healthy_fraction}")
        if self.max_lesions < 1:
            raise CorpusError(f"max_lesions must be at least 1, got {self.max_lesions}")
        if not self.splits:
            raise CorpusError("no splits given (e.g. train=0.9,test=0.1)")
        for name, fraction in self.splits.items():
            if not SPLIT_NAME.match(name):
                raise CorpusError(f"split name {name!r} must be letters, digits and underscores (e.g. 'train')")
            if not fraction > 0:
                raise CorpusError(f"split {name!r} has fraction {fraction}; fractions must be positive")
        if abs(sum(self.splits.values()) - 1.0) > 1e-6:
            raise CorpusError(
                f"split fractions must sum to 1, got {dict(self.splits)} (sum {sum(self.splits.values()):g})"
            )
        if self.samples_per_shard < 1:
            raise CorpusError(f"samples_per_shard must be at least 1, got {self.samples_per_shard}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise CorpusError(
                f"shard_index must be in [0, num_shards); "
                f"got shard_index={self.shard_index}, num_shards={self.num_shards}"
            )
        if self.phantom_seed < 0:
            raise CorpusError(f"phantom_seed must be a non-negative integer, got {self.phantom_seed}")
        if self.workers < 1:
            raise CorpusError(f"workers must be at least 1, got {self.workers}")
        try:
            if self.refiner is not None:
                LesionRefiner.checkpoint_path(self.refiner)
            if self.quality_control:
                LesionQualityControl.checkpoint_path(self.qc_model)
        except FileNotFoundError as err:
            raise CorpusError(str(err)) from None
        if self.quality_control and not 0 < self.qc_threshold <= 1:
            raise CorpusError(f"qc_threshold is a share of the lesion's voxels in (0, 1], got {self.qc_threshold}")
        if self.quality_control and self.qc_max_attempts < 1:
            raise CorpusError(f"qc_max_attempts must be at least 1, got {self.qc_max_attempts}")
        bad_phases = [p for p in self.phases if p not in PHASES]
        if bad_phases or not self.phases:
            raise CorpusError(f"phases must be a non-empty subset of {list(PHASES)}, got {self.phases}")

    def generation_settings(self) -> dict[str, Any]:
        """The settings that determine the corpus content (not where or by how many processes).

        Folder sources are recorded by folder name only, so no local path ends up in a shard.
        """
        fov = self.phantom_field_of_view_mm
        # phantom_seed is recorded only when set, so corpora written before it existed stay resumable
        extra = {"phantom_seed": int(self.phantom_seed)} if self.phantom_seed else {}
        # the learned stage likewise, recorded by folder name, only when used
        if self.refiner is not None:
            extra["refiner"] = Path(self.refiner).name
        if self.quality_control:
            extra["quality_control"] = {
                "model": Path(self.qc_model).name if self.qc_model else "pasta-small",
                "threshold": float(self.qc_threshold),
                "max_attempts": int(self.qc_max_attempts),
            }
        return {
            "num_samples": int(self.num_samples),
            "seed": int(self.seed),
            "sources": [_source_name(s) for s in self.sources],
            "spacing_mm": float(self.spacing_mm),
            "lesion_types": self.lesion_types and list(self.lesion_types),
            "healthy_fraction": float(self.healthy_fraction),
            "max_lesions": int(self.max_lesions),
            "splits": [[k, float(v)] for k, v in self.splits.items()],  # a list: the order assigns samples
            "samples_per_shard": int(self.samples_per_shard),
            "augment": bool(self.augment),
            "with_pet": bool(self.with_pet),
            "phases": list(self.phases),
            "phantom_field_of_view_mm": None if fov is None else [float(v) for v in np.broadcast_to(fov, (3,))],
            **extra,
        }


def generation_command(settings: Mapping[str, Any], out: str = "OUT") -> str:
    """The ``pasta generate`` command reproducing ``settings`` (:meth:`GenerationConfig.generation_settings`)."""
    parts = ["pasta generate"]
    parts += [f"--source {s}" for s in settings["sources"]]
    parts += [f"--out {out}", f"--num-samples {settings['num_samples']}", f"--seed {settings['seed']}"]
    parts.append(f"--spacing {settings['spacing_mm']:g}")
    if settings["lesion_types"]:
        parts.append(f"--lesion-types {','.join(settings['lesion_types'])}")
    parts.append(f"--healthy-fraction {settings['healthy_fraction']:g}")
    parts.append(f"--max-lesions {settings['max_lesions']}")
    parts.append("--splits " + ",".join(f"{k}={v:g}" for k, v in settings["splits"]))
    parts.append(f"--samples-per-shard {settings['samples_per_shard']}")
    if list(settings["phases"]) != list(PHASES):
        parts.append(f"--phases {','.join(settings['phases'])}")
    if settings.get("phantom_field_of_view_mm"):
        parts.append("--phantom-fov-mm " + ",".join(f"{v:g}" for v in settings["phantom_field_of_view_mm"]))
    if settings.get("phantom_seed"):
        parts.append(f"--phantom-seed {settings['phantom_seed']}")
    if settings.get("refiner"):
        parts.append(f"--refiner {settings['refiner']}")
    if settings.get("quality_control"):
        qc = settings["quality_control"]
        parts.append("--quality-control")
        if qc["model"] != "pasta-small":
            parts.append(f"--qc-model {qc['model']}")
        parts.append(f"--qc-threshold {qc['threshold']:g} --qc-max-attempts {qc['max_attempts']}")
    if not settings["augment"]:
        parts.append("--no-augment")
    if settings["with_pet"]:
        parts.append("--pet")
    return " ".join(parts)


@dataclass(frozen=True)
class PlannedSample:
    """One row to generate: everything :func:`build_sample` needs besides the bases."""

    index: int
    split: str
    case_id: str
    lesion_types: tuple[str, ...]
    base_index: int
    seed: int


@dataclass(frozen=True)
class ShardPlan:
    """One output file: its split, name and rows."""

    split: str
    index: int
    count: int
    samples: tuple[PlannedSample, ...]

    @property
    def filename(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}.parquet"


def sample_seed(run_seed: int, index: int) -> int:
    """The seed of sample ``index`` of a run (a non-negative int64 from ``SeedSequence((run_seed, index))``)."""
    state = np.random.SeedSequence((run_seed, index)).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def _child_rng(seed: int, purpose: int) -> np.random.Generator:
    """An independent stream of ``seed`` (``generate_sample`` itself uses ``default_rng(seed)``)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(purpose,)))


_PLAN_STREAM, _AUGMENT_STREAM = 0, 1


def split_sizes(num_samples: int, splits: Mapping[str, float]) -> dict[str, int]:
    """Samples per split: fractions of ``num_samples`` rounded by largest remainder (ties: split order)."""
    fractions = {name: Fraction(value).limit_denominator(10**9) for name, value in splits.items()}
    total = sum(fractions.values())
    exact = {name: fraction / total * num_samples for name, fraction in fractions.items()}
    sizes = {name: math.floor(value) for name, value in exact.items()}
    leftover = num_samples - sum(sizes.values())
    by_remainder = sorted(exact, key=lambda name: -(exact[name] - sizes[name]))  # stable: split order on ties
    for name in by_remainder[:leftover]:
        sizes[name] += 1
    return sizes


def plan_corpus(
    config: GenerationConfig, bases: Sequence[HealthyBase | PhantomRecipe] | None = None
) -> list[PlannedSample]:
    """The deterministic plan of every sample of a run (see the module docstring).

    Raises:
        CorpusError: invalid settings.
        BaseError: no base has the organ a requested lesion type needs.
    """
    config.validate()
    bases = load_bases(config) if bases is None else bases
    types = config.resolved_lesion_types
    organs_of_type = {t: LESION_TYPES[t].organ for t in types}
    has = {(b, organ): base.has_organ(organ) for b, base in enumerate(bases) for organ in set(organs_of_type.values())}
    candidates = {t: [b for b in range(len(bases)) if has[b, organ]] for t, organ in organs_of_type.items()}
    if config.healthy_fraction < 1:
        for lesion_type, found in candidates.items():
            if not found:
                _raise_missing_organ(lesion_type, bases)

    healthy = Fraction(config.healthy_fraction).limit_denominator(10**6)
    half = Fraction(1, 2)
    plan: list[PlannedSample] = []
    index = 0
    for split, size in split_sizes(config.num_samples, config.splits).items():
        lesion_scans = 0
        for j in range(size):
            seed = sample_seed(config.seed, index)
            rng = _child_rng(seed, _PLAN_STREAM)
            # Evenly spread, round(size * healthy_fraction) in all: scan j is healthy when the
            # rounded running count of healthy scans steps up at j.
            if math.floor((j + 1) * healthy + half) > math.floor(j * healthy + half):
                chosen: tuple[str, ...] = ()
                base_index = int(rng.integers(len(bases)))
            else:
                primary = types[lesion_scans % len(types)]
                lesion_scans += 1
                base_index = int(candidates[primary][rng.integers(len(candidates[primary]))])
                extra = int(rng.integers(config.max_lesions))
                fitting = [t for t in types if has[base_index, organs_of_type[t]]]
                chosen = (primary, *(fitting[int(k)] for k in rng.integers(len(fitting), size=extra)))
            case_id = f"{split}-{index:06d}-{chosen[0] if chosen else 'healthy'}"
            plan.append(PlannedSample(index, split, case_id, chosen, base_index, seed))
            index += 1
    return plan


def plan_shards(plan: Sequence[PlannedSample], samples_per_shard: int) -> list[ShardPlan]:
    """Cut each split's samples into files of ``samples_per_shard`` rows, in split order."""
    by_split: dict[str, list[PlannedSample]] = {}
    for item in plan:
        by_split.setdefault(item.split, []).append(item)
    shards = []
    for split, items in by_split.items():
        count = math.ceil(len(items) / samples_per_shard)
        for k in range(count):
            rows = tuple(items[k * samples_per_shard : (k + 1) * samples_per_shard])
            shards.append(ShardPlan(split=split, index=k, count=count, samples=rows))
    return shards


def _raise_missing_organ(lesion_type: str, bases: Sequence[HealthyBase | PhantomRecipe]) -> None:
    organ = LESION_TYPES[lesion_type].organ
    reasons = []
    for base in bases:
        try:
            base.require_organ(organ)
        except BaseError as err:
            reasons.append(str(err))
    raise BaseError(
        f"lesion type {lesion_type!r} needs the organ {organ!r}, which none of the {len(bases)} base(s) has: "
        + "; ".join(reasons)
        + ". Add '--source phantom' (it has every organ) or choose other --lesion-types."
    )


# --------------------------------------------------------------------------------------------
# Bases (cached per process) and one sample
# --------------------------------------------------------------------------------------------


def _source_name(source: str) -> str:
    return "phantom" if source == "phantom" else Path(source).name


@dataclass(frozen=True)
class PhantomRecipe:
    """A phantom base known by its arguments and built on first use (then cached per process).

    Planning needs only a base's id and organs, and a phantom has every organ the lesion types
    need by construction, so a run builds only the phantoms its samples actually use.
    """

    spacing_mm: float
    phase: str
    noise_hu: float
    seed: int
    field_of_view_mm: tuple[float, float, float] | None

    @property
    def base_id(self) -> str:
        return f"phantom-{self.seed}"

    def has_organ(self, organ: str, min_voxels: int = 1) -> bool:
        return organ in ORGAN_GROUPS

    def require_organ(self, organ: str, min_voxels: int = 1) -> None:
        if not self.has_organ(organ):
            self.build().require_organ(organ, min_voxels)

    def build(self) -> HealthyBase:
        if self not in _PHANTOM_CACHE:
            from .phantom import make_phantom

            extra = {} if self.field_of_view_mm is None else {"field_of_view_mm": self.field_of_view_mm}
            base = make_phantom(
                spacing_mm=self.spacing_mm, phase=self.phase, noise_hu=self.noise_hu, seed=self.seed, **extra
            )
            logger.info("built %s (%s, %s)", base.base_id, self.phase, "x".join(map(str, base.ct_hu.shape)))
            _PHANTOM_CACHE[self] = base
        return _PHANTOM_CACHE[self]


#: Bases (or phantom recipes) per (source, spacing_mm, phases, phantom field of view, phantom seed), once per process.
_BASE_CACHE: dict[tuple, tuple[HealthyBase | PhantomRecipe, ...]] = {}
_PHANTOM_CACHE: dict[PhantomRecipe, HealthyBase] = {}


def _source_keys(config: GenerationConfig) -> list[tuple]:
    fov = config.phantom_field_of_view_mm
    fov = None if fov is None else tuple(float(v) for v in np.broadcast_to(fov, (3,)))
    phases = tuple(config.phases)
    return [
        (source, float(config.spacing_mm), phases, fov, int(config.phantom_seed))
        for source in dict.fromkeys(str(s) for s in config.sources)
    ]


def _source_bases(key: tuple) -> tuple[HealthyBase | PhantomRecipe, ...]:
    if key in _BASE_CACHE:
        return _BASE_CACHE[key]
    source, spacing_mm, phases, field_of_view_mm, phantom_seed = key
    if source == "phantom":
        pool = len(PHANTOM_NOISE_HU)
        bases: list[HealthyBase | PhantomRecipe] = [
            # seeds (hence base ids) depend on the phase, not on which phases were asked for
            PhantomRecipe(spacing_mm, phase, noise, phantom_seed + pool * PHASES.index(phase) + k, field_of_view_mm)
            for phase in phases
            for k, noise in enumerate(PHANTOM_NOISE_HU)
        ]
        logger.info("source phantom: %d phantom base(s) at %g mm, built when first used", len(bases), spacing_mm)
    else:
        bases = [resample_base(base, spacing_mm) for base in load_base_dir(source)]
        logger.info(
            "source %s: %d base(s) at %g mm (%s)",
            _source_name(source),
            len(bases),
            spacing_mm,
            ", ".join(f"{b.base_id} {'x'.join(map(str, b.ct_hu.shape))}" for b in bases),
        )
    _BASE_CACHE[key] = tuple(bases)
    return _BASE_CACHE[key]


def load_bases(config: GenerationConfig) -> list[HealthyBase | PhantomRecipe]:
    """Every healthy base of the configured sources, resampled to ``config.spacing_mm``.

    Phantoms come as :class:`PhantomRecipe` (built on first use by :func:`build_sample`).

    Loaded once per process and cached. Raises :class:`BaseError` / ``ImageReadError`` for
    missing folders, corrupt files or duplicate base ids across sources.
    """
    bases = [base for key in _source_keys(config) for base in _source_bases(key)]
    ids = Counter(base.base_id for base in bases)
    duplicates = sorted(name for name, n in ids.items() if n > 1)
    if duplicates:
        raise BaseError(f"base ids {duplicates} appear in more than one source; rename the files so ids are unique")
    return bases


def build_sample(config: GenerationConfig, item: PlannedSample) -> CorpusSample:
    """Generate one planned sample: its base (augmented with the sample's own stream), lesions, report.

    The row's ``seed`` drives the augmentation and ``generate_sample``. When a lesion cannot be
    placed (a small organ after deformation, crowded by other lesions), the sample is redrawn
    with a seed derived from ``(item.seed, attempt)`` — deterministic, and recorded in the row.

    Raises:
        BaseError: no placement after :data:`SAMPLE_ATTEMPTS` seeds.
    """
    source = load_bases(config)[item.base_index]
    if isinstance(source, PhantomRecipe):
        source = source.build()
    seed = item.seed
    abandoned: list[dict] = []  # synthesis records of seeds that failed quality control
    for attempt in range(SAMPLE_ATTEMPTS):
        if attempt:
            seed = sample_seed(item.seed, attempt)
        base = augment_anatomy(source, _child_rng(seed, _AUGMENT_STREAM)) if config.augment else source
        try:
            sample = generate_sample(
                base,
                item.lesion_types,
                seed=seed,
                case_id=item.case_id,
                with_pet=config.with_pet,
                synthesis=lesion_synthesis(config),
            )
            sample.synthesis_log[:0] = abandoned
            return sample
        except BaseError as err:
            abandoned.extend(getattr(err, "records", []))
            logger.warning("%s: seed %d failed (%s); redrawing", item.case_id, seed, err)
            failure = err
    raise BaseError(f"{item.case_id}: no lesion placement in {SAMPLE_ATTEMPTS} attempts: {failure}")


# --------------------------------------------------------------------------------------------
# Rows: encoding and decoding
# --------------------------------------------------------------------------------------------


def lesion_synthesis(config: GenerationConfig) -> LesionSynthesis | None:
    """The run's refiner and QC segmenter, loaded once per process (None without either)."""
    if config.refiner is None and not config.quality_control:
        return None
    key = (config.refiner, config.quality_control, config.qc_model, config.qc_threshold, config.qc_max_attempts)
    if key not in _SYNTHESIS_CACHE:
        _SYNTHESIS_CACHE[key] = LesionSynthesis(
            refiner=LesionRefiner.from_pretrained(config.refiner) if config.refiner else None,
            quality_control=LesionQualityControl.from_pretrained(
                config.qc_model, threshold=config.qc_threshold, max_attempts=config.qc_max_attempts
            )
            if config.quality_control
            else None,
        )
    return _SYNTHESIS_CACHE[key]


_SYNTHESIS_CACHE: dict[tuple, LesionSynthesis] = {}


def nifti_bytes(volume: np.ndarray, affine: np.ndarray) -> bytes:
    """Uncompressed NIfTI-1 bytes of a volume; qform and sform both carry the affine (mm)."""
    image = nib.Nifti1Image(np.asarray(volume), np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image.to_bytes()


def sample_to_row(sample: CorpusSample) -> dict[str, Any]:
    """A corpus row (the Arrow-side values of :func:`corpus_features`) from a sample."""

    def volume(array: np.ndarray | None, column: str) -> dict[str, Any] | None:
        if array is None:
            return None
        return {"bytes": nifti_bytes(array, sample.affine), "path": f"{sample.case_id}_{column}.nii"}

    return {
        "case_id": sample.case_id,
        "image": volume(sample.ct_hu.astype(np.int16, copy=False), "image"),
        "lesion_mask": volume(sample.lesion_mask.astype(np.uint8, copy=False), "lesion_mask"),
        "organ_map": volume(sample.organ_map.astype(np.uint8, copy=False), "organ_map"),
        "pet": volume(None if sample.pet_suv is None else sample.pet_suv.astype(np.float32, copy=False), "pet"),
        "lesion_types": list(sample.lesion_types),
        "phase": sample.phase,
        "spacing_mm": [float(s) for s in sample.spacing_mm],
        "affine": [float(v) for v in np.asarray(sample.affine, dtype=np.float64).reshape(-1)],
        "report": sample.report.to_json(),
        "report_text": sample.report_text,
        "base_id": sample.base_id,
        "seed": int(sample.seed),
    }


def _as_image(value: Any, column: str) -> nib.Nifti1Image:
    if isinstance(value, nib.spatialimages.SpatialImage):
        return value
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data is not None:
            data = bytes(data)
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            return nib.Nifti1Image.from_bytes(data)
        if value.get("path"):
            return nib.load(value["path"])
    raise CorpusError(
        f"column {column!r}: expected a NIfTI image or a {{'bytes', 'path'}} dict, got {type(value).__name__}"
    )


def _volume(value: Any, column: str, dtype: type) -> np.ndarray:
    return np.asarray(_as_image(value, column).dataobj).astype(dtype, copy=False)


def decode_sample(row: Mapping[str, Any]) -> CorpusSample:
    """A corpus row back as a :class:`CorpusSample` (numpy arrays, typed report).

    Accepts rows whose volume columns are decoded nibabel images (``load_dataset`` default) or
    raw ``{"bytes", "path"}`` dicts (``load_corpus(..., decode=False)``, or Parquet read directly).
    """
    pet = row.get("pet")
    return CorpusSample(
        case_id=row["case_id"],
        ct_hu=_volume(row["image"], "image", np.int16),
        lesion_mask=_volume(row["lesion_mask"], "lesion_mask", np.uint8),
        organ_map=_volume(row["organ_map"], "organ_map", np.uint8),
        pet_suv=None if pet is None else _volume(pet, "pet", np.float32),
        affine=np.asarray(row["affine"], dtype=np.float64).reshape(4, 4),
        lesion_types=list(row["lesion_types"]),
        phase=row["phase"],
        report=StructuredReport.from_json(row["report"]),
        report_text=row["report_text"],
        base_id=row["base_id"],
        seed=int(row["seed"]),
    )


def sample_to_tensors(row_or_sample: Mapping[str, Any] | CorpusSample, *, with_pet: bool = False) -> dict[str, Any]:
    """Torch tensors for training from a row or a sample.

    Returns:
        ``image`` float32 ``[1, X, Y, Z]`` (HU), ``lesion_mask`` and ``organ_map`` int64
        ``[X, Y, Z]``, ``affine`` float64 ``[4, 4]`` and, when ``with_pet``, ``pet`` float32
        ``[1, X, Y, Z]`` (SUV).

    Raises:
        CorpusError: ``with_pet`` for a row generated without PET.
    """
    import torch

    sample = row_or_sample if isinstance(row_or_sample, CorpusSample) else decode_sample(row_or_sample)
    out = {
        "image": torch.from_numpy(sample.ct_hu.astype(np.float32))[None],
        "lesion_mask": torch.from_numpy(sample.lesion_mask.astype(np.int64)),
        "organ_map": torch.from_numpy(sample.organ_map.astype(np.int64)),
        "affine": torch.from_numpy(np.asarray(sample.affine, dtype=np.float64).copy()),
    }
    if with_pet:
        if sample.pet_suv is None:
            raise CorpusError(f"{sample.case_id}: no PET in this row; generate the corpus with --pet")
        out["pet"] = torch.from_numpy(sample.pet_suv.astype(np.float32))[None]
    return out


def load_corpus(
    path_or_repo_id: str,
    split: str = "train",
    *,
    streaming: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    decode: bool = True,
    **load_kwargs: Any,
):
    """One split of a corpus (local folder or Hub dataset repo) with ``datasets.load_dataset``.

    Args:
        path_or_repo_id: a corpus folder or a Hub dataset repo id.
        split: the split to read.
        streaming: an ``IterableDataset`` reading shards lazily (otherwise a cached ``Dataset``).
        rank / world_size: give both to read this process's disjoint part
            (``datasets.distributed.split_dataset_by_node``: whole shards when their number is a
            multiple of ``world_size``, every ``world_size``-th row otherwise).
        decode: False keeps the volume columns as raw ``{"bytes", "path"}`` dicts (for
            :func:`decode_sample`, skipping the experimental ``Nifti`` decoding).
        **load_kwargs: passed to ``load_dataset`` (``cache_dir``, ``revision``, ``token``, ...).
    """
    from datasets import Nifti, load_dataset
    from datasets.distributed import split_dataset_by_node

    if (rank is None) != (world_size is None):
        raise CorpusError("give both rank and world_size (or neither)")
    dataset = load_dataset(str(path_or_repo_id), split=split, streaming=streaming, **load_kwargs)
    if not decode:
        for column in NIFTI_COLUMNS:
            dataset = dataset.cast_column(column, Nifti(decode=False))
    if rank is not None:
        if not 0 <= rank < world_size:
            raise CorpusError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    return dataset


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _row_for(config: GenerationConfig, item: PlannedSample) -> tuple[dict[str, Any], list[dict]]:
    sample = build_sample(config, item)
    return sample_to_row(sample), sample.synthesis_log


def _init_worker(bases: dict[tuple, tuple[HealthyBase | PhantomRecipe, ...]]) -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; results do not depend on the thread count
    _BASE_CACHE.update(bases)  # the parent's loaded bases, sent once, instead of reloading them


def _ordered_rows(
    config: GenerationConfig, items: Sequence[PlannedSample], workers: int
) -> Iterator[tuple[dict[str, Any], list[dict]]]:
    """Rows of ``items`` in order, each with its synthesis log; with workers, at most
    ``2 * workers`` samples in flight."""
    if workers == 1:
        for item in items:
            yield _row_for(config, item)
        return
    context = multiprocessing.get_context("spawn")
    bases = {key: _source_bases(key) for key in _source_keys(config)}
    with context.Pool(workers, initializer=_init_worker, initargs=(bases,)) as pool:
        pending: deque = deque()
        queue = iter(items)
        for item in queue:
            pending.append(pool.apply_async(_row_for, (config, item)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            row = pending.popleft().get()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.apply_async(_row_for, (config, nxt)))
            yield row


def _shard_schema(settings: Mapping[str, Any]):
    schema = corpus_features().arrow_schema
    payload = json.dumps({"generator": "datasets_pasta", "settings": settings}, sort_keys=True)
    return schema.with_metadata({**(schema.metadata or {}), GENERATION_METADATA_KEY: payload.encode()})


def _temp_path(path: Path) -> Path:
    # Hidden and without the split prefix, so the `data/<split>-*` globs never see it.
    return path.with_name(f".{path.name}.tmp")


def _read_settings(path: Path) -> dict[str, Any] | None:
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if GENERATION_METADATA_KEY not in metadata:
        return None
    return json.loads(metadata[GENERATION_METADATA_KEY])["settings"]


def _check_existing(data_dir: Path, shards: Sequence[ShardPlan], settings: Mapping[str, Any]) -> None:
    """Refuse to mix this run's files with files of a different run of the same split."""
    expected = {shard.filename for shard in shards}
    for split in dict.fromkeys(shard.split for shard in shards):
        for path in sorted(data_dir.glob(f"{split}-*.parquet")):
            if not SHARD_NAME.match(path.name):
                continue
            hint = f"use another --out or delete {data_dir}/{split}-*.parquet"
            if path.name not in expected:
                raise CorpusError(f"{path} belongs to a different run of split {split!r} (another shard count); {hint}")
            found = _read_settings(path)
            if found != settings:
                changed = sorted(k for k in settings if found is None or found.get(k) != settings[k])
                raise CorpusError(f"{path} was generated with other settings (differing: {', '.join(changed)}); {hint}")


def _write_shard(
    path: Path, shard: ShardPlan, rows: Iterator[tuple[dict[str, Any], list[dict]]], schema, progress, qc
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = _temp_path(path)
    small_columns = ["case_id", "lesion_types", "phase", "base_id"]
    try:
        with open(tmp, "wb") as handle:
            with pq.ParquetWriter(
                handle, schema, compression="zstd", use_dictionary=small_columns, write_statistics=small_columns
            ) as writer:
                for _ in shard.samples:
                    row, synthesis_log = next(rows)
                    # One row group per scan: readers hold one volume set at a time.
                    writer.write_table(pa.Table.from_pylist([row], schema=schema))
                    qc.add(synthesis_log)
                    progress.update(1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_corpus(config: GenerationConfig, *, progress: bool = True) -> dict[str, Any]:
    """Build this process's share of the corpus in ``config.out_dir`` and rewrite its dataset card.

    Existing output files are kept and skipped; the rest are written atomically. Files written
    by another run of the same split with different settings are refused (:class:`CorpusError`).

    Returns:
        A summary: ``out_dir``, ``files_written`` / ``files_skipped`` (names), ``samples_written``,
        ``split_sizes`` (samples per split in the whole run), ``seconds`` and, with quality
        control, ``quality_control`` (lesions, attempts, rejected, pass rate of the written samples).

    Raises:
        CorpusError: invalid settings or conflicting files in ``out_dir``.
        BaseError / ImageReadError: unusable bases (missing folder, corrupt NIfTI, missing organ).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    config.validate()
    bases = load_bases(config)
    plan = plan_corpus(config, bases)
    shards = plan_shards(plan, config.samples_per_shard)
    settings = config.generation_settings()
    data_dir = config.out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    _check_existing(data_dir, shards, settings)

    mine = [shard for g, shard in enumerate(shards) if g % config.num_shards == config.shard_index]
    todo = [shard for shard in mine if not (data_dir / shard.filename).exists()]
    skipped = [shard.filename for shard in mine if (data_dir / shard.filename).exists()]
    for shard in todo:
        _temp_path(data_dir / shard.filename).unlink(missing_ok=True)  # left by an interrupted run
    if skipped:
        logger.info("%d file(s) already present, skipped: %s", len(skipped), ", ".join(skipped))
    logger.info(
        "building %d of %d file(s) (process %d of %d), %d sample(s), %d worker(s)",
        len(todo),
        len(shards),
        config.shard_index,
        config.num_shards,
        sum(len(s.samples) for s in todo),
        config.workers,
    )

    schema = _shard_schema(settings)
    items = [item for shard in todo for item in shard.samples]
    rows = _ordered_rows(config, items, min(config.workers, max(1, len(items))))
    written = []
    qc = QualityControlSummary()
    with tqdm(total=len(items), unit="scan", desc="pasta generate", disable=not progress) as bar:
        try:
            for shard in todo:
                _write_shard(data_dir / shard.filename, shard, rows, schema, bar, qc)
                written.append(shard.filename)
                logger.info("wrote %s (%d rows)", shard.filename, len(shard.samples))
        finally:
            rows.close()  # stops the worker pool if writing failed
    write_dataset_card(config.out_dir)
    return {
        "out_dir": str(config.out_dir),
        "files_written": written,
        "files_skipped": skipped,
        "samples_written": len(items),
        "split_sizes": split_sizes(config.num_samples, config.splits),
        "seconds": round(time.perf_counter() - start, 3),
        **({"quality_control": qc.to_dict()} if config.quality_control else {}),
    }


# --------------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------------


@dataclass
class SplitOnDisk:
    """What the shards of one split on disk hold (from Parquet metadata and three small columns).

    ``num_bytes`` is the uncompressed data size, ``download_bytes`` the size of the files.
    """

    name: str
    files: list[Path]
    expected_files: int
    num_examples: int
    num_bytes: int
    download_bytes: int
    lesion_counts: Counter
    healthy: int
    base_ids: list[str]
    with_pet: bool
    settings: dict[str, Any] | None


def scan_corpus(out_dir: str | Path) -> dict[str, SplitOnDisk]:
    """The splits present in ``out_dir/data`` (shard files named ``<split>-XXXXX-of-YYYYY.parquet``)."""
    import pyarrow.parquet as pq

    data_dir = Path(out_dir) / "data"
    files: dict[str, list[Path]] = {}
    for path in sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []:
        match = SHARD_NAME.match(path.name)
        if match:
            files.setdefault(match["split"], []).append(path)
    splits = {}
    for name, paths in sorted(files.items(), key=lambda item: _split_order(item[0])):
        lesions: Counter = Counter()
        healthy = 0
        bases: set[str] = set()
        rows = num_bytes = 0
        with_pet = False
        for path in paths:
            metadata = pq.ParquetFile(path).metadata
            num_bytes += sum(metadata.row_group(k).total_byte_size for k in range(metadata.num_row_groups))
            table = pq.read_table(path, columns=["lesion_types", "base_id", "pet"])
            rows += table.num_rows
            for types in table.column("lesion_types").to_pylist():
                lesions.update(types)
                healthy += not types
            bases.update(table.column("base_id").to_pylist())
            with_pet |= table.column("pet").null_count < table.num_rows
        splits[name] = SplitOnDisk(
            name=name,
            files=paths,
            expected_files=max(int(SHARD_NAME.match(p.name)["count"]) for p in paths),
            num_examples=rows,
            num_bytes=num_bytes,
            download_bytes=sum(p.stat().st_size for p in paths),
            lesion_counts=lesions,
            healthy=healthy,
            base_ids=sorted(bases),
            with_pet=with_pet,
            settings=_read_settings(paths[0]),
        )
    return splits


def _split_order(name: str) -> tuple[int, str]:
    usual = ("train", "validation", "test")
    return (usual.index(name) if name in usual else len(usual), name)


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def _base_origin(base_id: str) -> str:
    if base_id.startswith("phantom"):
        return "procedural phantom of this package (Apache-2.0)"
    return KNOWN_BASES.get(base_id, "user-provided scan: check its license before sharing")


def dataset_card(out_dir: str | Path, repo_id: str | None = None) -> str:
    """The dataset card (YAML front matter + description) of the corpus in ``out_dir``, from what is on disk."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    splits = scan_corpus(out_dir)
    if not splits:
        raise CorpusError(f"{out_dir}: no shards found in data/ (expected data/<split>-XXXXX-of-YYYYY.parquet)")
    all_bases = sorted({b for s in splits.values() for b in s.base_ids}, key=_natural_key)
    known = all(b.startswith("phantom") or b in KNOWN_BASES for b in all_bases)
    total = sum(s.num_examples for s in splits.values())
    tags = ["medical", "ct", "3d", "nifti", "synthetic", "tumor", "segmentation", "radiology-report", "pasta"]
    if any(s.with_pet for s in splits.values()):
        tags.append("pet")
    card_data = DatasetCardData(
        license="apache-2.0" if known else "other",
        pretty_name="PASTA-Gen synthetic pan-tumor CT",
        task_categories=["image-segmentation", "image-to-text"],
        tags=tags,
        size_categories=[_size_category(total)],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*"} for name in splits],
            }
        ],
    )
    info = DatasetInfo(
        features=corpus_features(),
        splits=SplitDict(
            {n: SplitInfo(n, num_bytes=s.num_bytes, num_examples=s.num_examples) for n, s in splits.items()}
        ),
        download_size=sum(s.download_bytes for s in splits.values()),
        dataset_size=sum(s.num_bytes for s in splits.values()),
        config_name="default",
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    return f"---\n{card_data.to_yaml()}\n---\n\n{_card_body(splits, all_bases, repo_id, known)}"


def _card_body(splits: Mapping[str, SplitOnDisk], bases: Sequence[str], repo_id: str | None, known: bool) -> str:
    source = repo_id or "path/to/this/folder"
    lines = [
        "# PASTA-Gen synthetic pan-tumor CT",
        "",
        "Synthetic lesions inserted into healthy CT scans, each with a voxel mask, the organ map and a "
        "structured radiology report whose measured fields (diameters, volume, mean HU, density, organ "
        "and location, relation to adjacent organs) were computed from the saved voxels. Generated with "
        "`datasets_pasta` (PASTA on the Hub).",
        "",
        "| split | scans | with lesions | healthy | files |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for s in splits.values():
        complete = "" if len(s.files) == s.expected_files else f" (incomplete: {len(s.files)} of {s.expected_files})"
        lines.append(
            f"| {s.name} | {s.num_examples} | {s.num_examples - s.healthy} | {s.healthy} | {len(s.files)}{complete} |"
        )
    lines += [
        "",
        "## Columns",
        "",
        "| column | type | meaning |",
        "| --- | --- | --- |",
        "| `case_id` | string | unique id, stable across re-runs with the same seed |",
        "| `image` | NIfTI (int16) | CT in HU, RAS+ voxel order, affine in the header |",
        "| `lesion_mask` | NIfTI (uint8) | 0 background, k = lesion with report id k |",
        '| `organ_map` | NIfTI (uint8) | organ ids, TotalSegmentator "total" convention |',
        "| `pet` | NIfTI (float32) or null | simulated FDG PET in SUV on the same grid |",
        "| `lesion_types` | list of string | lesion type of each lesion, empty for healthy scans |",
        "| `phase` | string | contrast phase: plain / arterial / venous |",
        "| `spacing_mm` | 3 floats | voxel size (mm) |",
        "| `affine` | 16 floats | voxel -> RAS+ world (mm), row-major 4x4 |",
        "| `report` | string (JSON) | structured report, schema 1.0 (`modeling_pasta.report`) |",
        "| `report_text` | string | free-text report rendered from the structured report |",
        "| `base_id` | string | the healthy base the scan was made from |",
        "| `seed` | int64 | the scan's own seed |",
        "",
        "Volumes are uncompressed NIfTI-1 bytes in the `datasets.Nifti` feature; the Parquet files "
        "are zstd-compressed, one row group per scan.",
        "",
        "## How it was generated",
        "",
    ]
    runs: dict[str, list[SplitOnDisk]] = {}  # one command per run, which may hold several splits
    for s in splits.values():
        key = json.dumps(s.settings, sort_keys=True)
        runs.setdefault(key, []).append(s)
    for group in runs.values():
        names = ", ".join(f"`{s.name}`" for s in group)
        settings = group[0].settings
        if settings is None:
            lines += [f"- {names}: settings not recorded in the shards.", ""]
            continue
        lines += [
            f"- {names} (bases: {', '.join(settings['sources'])}; seed {settings['seed']}):",
            "",
            "  ```bash",
            f"  {generation_command(settings)}",
            "  ```",
            "",
        ]
    types = [t for t in LESION_TYPES if any(s.lesion_counts[t] for s in splits.values())]
    lines += [
        "",
        "## Lesion types",
        "",
        "| type | organ | malignant | " + " | ".join(splits) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in splits) + " |",
    ]
    for t in types:
        info = LESION_TYPES[t]
        counts = " | ".join(str(s.lesion_counts[t]) for s in splits.values())
        lines.append(f"| {t} | {info.organ} | {'yes' if info.malignant else 'no'} | {counts} |")
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        f'stream = load_dataset("{source}", split="{next(iter(splits))}", streaming=True)',
        'row = next(iter(stream))            # row["image"] is a nibabel image (datasets.Nifti)',
        "",
        "# with the package (pip install pasta-hub): numpy arrays, a typed report, torch tensors",
        "from datasets_pasta.corpus import load_corpus, decode_sample, sample_to_tensors",
        f'stream = load_corpus("{source}", split="{next(iter(splits))}", rank=0, world_size=1)',
        "sample = decode_sample(next(iter(stream)))",
        "```",
        "",
        "## License and attribution",
        "",
        ("Apache-2.0." if known else "License: other: some bases are user-provided scans; check their terms.")
        + " Healthy bases used:",
        "",
    ]
    lines += [f"- `{b}`: {_base_origin(b)}" for b in bases]
    lines.append("")
    return "\n".join(lines)


def write_dataset_card(out_dir: str | Path, repo_id: str | None = None) -> Path:
    """(Re)write ``out_dir/README.md`` from the shards on disk, atomically."""
    path = Path(out_dir) / "README.md"
    text = dataset_card(out_dir, repo_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def push_corpus(
    out_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload PASTA-Gen corpus",
) -> str:
    """Upload a corpus folder to a Hub dataset repo (created if needed); returns the commit URL.

    Uploads ``README.md`` (rewritten with ``repo_id`` in its loading example) and
    ``data/*.parquet``; remote shards no longer present locally are deleted, so the repo
    mirrors the folder.

    Raises:
        CorpusError: ``out_dir`` is not a corpus folder.
    """
    from huggingface_hub import HfApi

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise CorpusError(f"{out_dir}: no such folder (run `pasta generate --out {out_dir}` first)")
    if not scan_corpus(out_dir):
        raise CorpusError(f"{out_dir}: no shards in data/ (expected data/<split>-XXXXX-of-YYYYY.parquet)")
    write_dataset_card(out_dir, repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(out_dir),
        repo_id=repo_id,
        repo_type="dataset",
        allow_patterns=["README.md", "data/*.parquet"],
        delete_patterns=["data/*.parquet"],
        commit_message=commit_message,
    )
    logger.info("pushed %s to https://huggingface.co/datasets/%s", out_dir, repo_id)
    return str(getattr(commit, "commit_url", commit))


__all__ = [
    "CorpusError",
    "GenerationConfig",
    "PlannedSample",
    "ShardPlan",
    "SplitOnDisk",
    "build_sample",
    "corpus_features",
    "dataset_card",
    "decode_sample",
    "generate_corpus",
    "generation_command",
    "PhantomRecipe",
    "load_bases",
    "load_corpus",
    "nifti_bytes",
    "plan_corpus",
    "plan_shards",
    "push_corpus",
    "sample_seed",
    "sample_to_row",
    "sample_to_tensors",
    "scan_corpus",
    "split_sizes",
    "write_dataset_card",
]
