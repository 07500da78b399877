"""Every user-facing key of every task, typed and range-checked before any output exists.

``medgen <task>`` runs the task's ``check(cfg)`` on the composed config before Hydra makes a run
folder; the task functions run it again first thing, so the Python API gets the same errors. A
mistake is a :class:`medgen.errors.UserError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medgen.errors import ConfigError, InputFileError, MissingFileError, UserError
from medgen.marking import ReleaseOptions, with_release
from medgen.records import Sampler, SampleSettings
from medgen.utils.validate import read_record

SEED = {"ge": 0, "le": 2**63 - 1}
POSITIVE = {"ge": 1}


# ------------------------------------------------------------------------------------- sample


# keys of medgen sample that only scan models read: key -> (default, as YAML writes it); a
# molecule model refuses any other value
SCAN_ONLY_KEYS: dict[str, tuple[Any, str]] = {
    "audit": (False, "false"),
    "allow_memorized": (False, "false"),
    "audit_train": (None, "null"),
    "evaluation": (None, "null"),
    "layout": ("decathlon", "decathlon"),
    "preview_labels": ("overlay", "overlay"),
}


@dataclass(frozen=True)
class SampleJob:
    """``conf/sample.yaml`` (and ``conf/sample/*.yaml``): what ``medgen sample`` reads."""

    ckpt: str = field(metadata={"help": "checkpoint file or run dir"})
    out: Path = field(metadata={"help": "folder for volumes, .csv/.sdf for molecules"})
    n: int = field(default=16, metadata=POSITIVE)
    seed: int = field(default=0, metadata=SEED)
    batch_size: int | None = field(default=None, metadata=POSITIVE)
    overwrite: bool = False
    preview: bool = True
    preview_labels: Literal["overlay", "rows", "none"] = "overlay"
    sampler: Literal["ddpm", "ddim", "dpmpp", "heun", "rflow"] | None = None
    steps: int | None = field(default=None, metadata=POSITIVE)
    eta: float | None = field(default=None, metadata={"ge": 0.0, "le": 1.0})
    shift: float = field(default=1.0, metadata={"gt": 0.0})
    guidance_scale: float = field(default=1.0, metadata={"ge": 0.0})
    condition: int | str | dict[str, Any] | None = None  # molecules: property targets
    use_ema: bool = True
    temperature: float = field(default=1.0, metadata={"ge": 0.0})
    latent_prior: Literal["auto", "fitted", "normal"] = "auto"  # molecules
    # molecule release (medgen.molecules.release): drop training copies, dual-use alerts
    novel_only: bool = False
    dualuse: bool = True
    train_smiles: str | None = None
    indices: str | None = None
    finalize_only: bool = False
    layout: Literal["decathlon", "nnunet"] = "decathlon"
    # responsible release (medgen.marking.ReleaseOptions, docs/release.md)
    share: bool = False
    audit: bool = False
    allow_memorized: bool = False
    audit_train: str | None = None
    evaluation: Path | None = None

    def index_range(self) -> range | None:
        """``indices="a:b"`` as ``range(a, b)`` inside ``0..n-1`` (None: every index)."""
        if self.indices is None:
            return None
        lo, sep, hi = str(self.indices).partition(":")
        if sep and lo.strip().isdigit() and hi.strip().isdigit():
            a, b = int(lo), int(hi)
            if 0 <= a < b <= self.n:
                return range(a, b)
        raise ConfigError("indices", self.indices, f"'a:b' with 0 <= a < b <= n={self.n}")

    def release(self, generator: Any, checkpoint: Path) -> ReleaseOptions:
        """The release options of this run (local: the checkpoint path is never written); a
        molecule model refuses the scan-only keys (audit, cohort card figures, folder layout)."""
        if str(getattr(generator, "output", "")) == "molecules":
            for key, (default, shown) in SCAN_ONLY_KEYS.items():
                value = getattr(self, key)
                if value != default:
                    value = str(value) if isinstance(value, Path) else value
                    raise ConfigError(key, value, f"{shown} for a molecule model (scan models)")
        cls = type(generator)
        return ReleaseOptions(
            share=self.share,
            audit=self.audit,
            allow_memorized=self.allow_memorized,
            audit_train=self.audit_train,
            evaluation=None if self.evaluation is None else str(self.evaluation.expanduser()),
            checkpoint=str(checkpoint.resolve()),
            generator=f"{cls.__module__}.{cls.__qualname__}",
        ).checked()

    def settings(self) -> SampleSettings:
        """The sampling record every generator takes (checked by its ``resolve_settings``)."""
        return SampleSettings(
            seed=self.seed,
            sampler=None if self.sampler is None else Sampler(self.sampler),
            steps=self.steps,
            eta=self.eta,
            shift=self.shift,
            guidance_scale=self.guidance_scale,
            condition=self.condition,  # type: ignore[arg-type]  # molecules: a dict of targets
            temperature=self.temperature,
            use_ema=self.use_ema,
            # the cohort folder's layout and how its preview shows label maps (scan models);
            # the defaults stay out of the record
            extra={
                k: v
                for k, v, default in (
                    ("layout", self.layout, "decathlon"),
                    ("preview_labels", self.preview_labels, "overlay"),
                    ("latent_prior", self.latent_prior, "auto"),
                )
                if v != default
            },  # fmt: skip
        )


@dataclass(frozen=True)
class SamplePlan:
    """A checked ``medgen sample``: the generator, its checkpoint and resolved settings."""

    job: SampleJob
    generator: Any
    checkpoint: Path
    settings: SampleSettings


def check_sample(cfg: Any) -> SamplePlan:
    """Check ``medgen sample``'s keys, load the generator its checkpoint names, resolve the
    settings against it, and let its cohort refuse an ``out`` it cannot write (wrong form, made
    with other settings, more samples than ``n``) — all before any output exists."""
    from medgen.generation import load_generator
    from medgen.molecules.release import molecule_release

    job = read_record(SampleJob, cfg)
    if job.index_range() is not None and (job.overwrite or job.finalize_only):
        key = "overwrite" if job.overwrite else "finalize_only"
        raise ConfigError(key, True, "false with indices= (array jobs: clear out once before "
                          "they start; finalize once after they end)")  # fmt: skip
    generator, ckpt_file = load_generator(job.ckpt)
    out = job.out.resolve()
    if out == ckpt_file.resolve() or ckpt_file.resolve().is_relative_to(out):
        raise UserError(f"out={job.out} would overwrite the checkpoint {ckpt_file}")
    if isinstance(job.condition, dict) and str(generator.output) != "molecules":
        raise ConfigError("condition", job.condition, "an index or a class name (scan models)")
    settings = generator.resolve_settings(job.settings())
    settings = with_release(settings, job.release(generator, ckpt_file))  # share, audit, ...
    settings = molecule_release(settings, generator, ckpt_file, novel_only=job.novel_only,
                                dualuse=job.dualuse, train_smiles=job.train_smiles)  # fmt: skip
    generator.cohort(job.out, settings, ckpt_file).check(job.n, overwrite=job.overwrite)
    return SamplePlan(job, generator, ckpt_file, settings)


# ------------------------------------------------------------------------------------- screen


@dataclass(frozen=True)
class ScreenJob:
    """``conf/screen.yaml``."""

    input: Path = field(metadata={"help": "a molecule file, a folder of them or a glob"})
    out: Path = field(metadata={"help": "a .csv/.parquet/.sdf file, or a dataset folder"})
    rejects: Path | None = None
    smiles_column: str | None = None
    rules: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)
    dedup: bool = False
    sort_by: str | None = None
    descending: bool = True
    top_k: int | None = field(default=None, metadata=POSITIVE)
    properties: list[str] | None = None
    n_jobs: int | None = field(default=None, metadata=POSITIVE)
    chunk_size: int = field(default=2000, metadata=POSITIVE)
    limit: int | None = field(default=None, metadata=POSITIVE)
    max_smiles_length: int | None = field(default=1000, metadata=POSITIVE)
    progress: bool = True
    engine: Literal["local", "dask"] = "local"
    scheduler: str | None = None
    cluster: dict[str, Any] | None = None
    partition_size: int = field(default=50_000, metadata=POSITIVE)
    shard: str | None = None
    overwrite: bool = False
    keep_run: bool = False
    keep_rejects: bool = True
    memory_limit: str = "2GB"
    dualuse: bool | None = None


def check_screen(cfg: Any) -> ScreenJob:
    """Check ``medgen screen``'s keys, the input, every output path against the input and each
    other, an existing ``out`` (refused unless ``overwrite``), and the rule, range and property
    names."""
    from medgen.chem.filters import build_filters, range_filter
    from medgen.chem.paths import (
        check_not_input,
        check_outputs,
        input_files,
        is_dataset,
        output_paths,
    )
    from medgen.chem.properties import columns_for
    from medgen.chem.screen import check_engine_args, is_score_range, parse_shard
    from medgen.errors import OutputExistsError

    job = read_record(ScreenJob, _ScreenView(cfg))
    files, root = input_files(job.input)
    if job.out.is_dir() and not is_dataset(job.out):
        raise ConfigError("out", str(job.out), "a file (.csv, .csv.gz, .parquet, .sdf)")
    if not job.out.parent.is_dir():
        raise MissingFileError(f"out={job.out}: the folder {job.out.parent} does not exist")
    paths = output_paths(job.out, job.rejects)
    check_outputs(files, paths)
    check_not_input(job.input, root, paths)
    if job.out.exists() and not job.overwrite:
        raise OutputExistsError(
            f"out={job.out} exists; pass overwrite=true to replace it, or choose another out"
        )
    parse_shard(job.shard)  # "i/N"
    check_engine_args(job.engine, job.partition_size, job.overwrite, job.keep_rejects,
                      job.shard, job.memory_limit)  # fmt: skip
    if job.cluster is not None and "_target_" not in job.cluster:
        raise ConfigError("cluster", job.cluster, "a mapping with _target_ (e.g. cluster=slurm)")
    if job.engine != "dask" and (job.scheduler or job.cluster):
        raise ConfigError("engine", job.engine, "dask when scheduler= or cluster= is set")
    if job.properties is not None:
        columns_for(job.properties)  # unknown property groups
    # unknown rules, malformed ranges, unknown score columns (carried ones are known only later)
    build_filters(job.rules, [r for r in job.ranges if is_score_range(r)])
    for expression in job.ranges:
        if not is_score_range(expression):
            range_filter(expression, [expression.split("<")[0].split(">")[0].split("=")[0]])
    return job


class _ScreenView(dict):
    """The screen config with ``rules=pains`` (one name on the command line) read as a list."""

    def __init__(self, cfg: Any) -> None:
        names = [f for f in ScreenJob.__dataclass_fields__ if f in cfg]
        super().__init__({k: _plain(cfg, k) for k in names})
        for key in ("rules", "ranges", "properties"):
            if isinstance(self.get(key), str):
                self[key] = [self[key]]


# ----------------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class EvaluateJob:
    """``conf/evaluate.yaml``: molecules when ``samples`` is a SMILES file, volumes when it is a
    folder or a ``.json`` datalist (:attr:`volumes`)."""

    samples: Path = field(
        metadata={"help": "a .smi/.csv/.sdf file of SMILES, or a folder / dataset.json of NIfTI"}
    )
    smiles_column: str | None = None
    reference: str | None = "moses"
    reference_name: str = "Ref"
    train: str | None = None
    limit: int | None = field(default=None, metadata=POSITIVE)
    k: list[int] = field(default_factory=lambda: [1000, 10000], metadata=POSITIVE)
    n_jobs: int | None = field(default=None, metadata=POSITIVE)
    device: str = "cpu"
    batch_size: int = field(default=512, metadata=POSITIVE)
    guacamol: bool = True
    kl_size: int = field(default=10000, metadata=POSITIVE)
    out: Path | None = None
    keep_run: bool = False
    # volumes only
    extractor: Literal["encoder", "resnet3d", "slices2d"] = "encoder"
    weights: Path | None = None
    resnet_depth: Literal[10, 18, 34, 50, 101, 152, 200] | None = None
    slices_per_plane: int = field(default=16, metadata=POSITIVE)
    encoder_steps: int = field(default=300, metadata=POSITIVE)
    feature_size: int | None = field(default=None, metadata={"ge": 4})
    volume_batch_size: int = field(default=4, metadata=POSITIVE)
    max_pairs: int | None = field(default=1000, metadata=POSITIVE)
    memorization_percentile: float = field(default=1.0, metadata={"gt": 0.0, "le": 100.0})
    tstr: bool = False
    tstr_steps: int = field(default=150, metadata=POSITIVE)
    intensity: Literal["ct_window", "percentile", "minmax"] = "ct_window"
    intensity_lo: float = -1000.0
    intensity_hi: float = 1000.0
    data_args: dict[str, Any] | None = None
    seed: int = field(default=0, metadata=SEED)
    progress: bool = True

    @property
    def volumes(self) -> bool:
        """True when ``samples`` is a folder or a ``.json`` datalist of NIfTI volumes."""
        from medgen.imaging.evaluation.loading import is_volume_source

        return is_volume_source(self.samples)


def check_evaluate(cfg: Any) -> EvaluateJob:
    """Check ``medgen evaluate``'s keys and that the files it names exist."""
    job = read_record(EvaluateJob, cfg)
    if job.volumes:
        check_volume_evaluation(job, cfg)
        return job
    if not job.samples.is_file():
        raise MissingFileError(f"samples={job.samples}: no such file")
    for key in ("reference", "train"):
        value = getattr(job, key)
        if value is not None and value != "moses" and not Path(value).expanduser().is_file():
            raise MissingFileError(f"{key}={value}: not 'moses' and no such file")
    if job.out is not None and job.out.resolve() == job.samples.resolve():
        raise UserError(f"out={job.out} would overwrite samples={job.samples}")
    return job


VOLUME_SOURCES = "a folder of NIfTI volumes, a dataset.json or a data config such as phantom"


def check_volume_evaluation(job: EvaluateJob, cfg: Any) -> None:
    """The volume branch of :func:`check_evaluate`: every source exists and reads (a data config
    builds with ``data_args``), the extractor has its weights, ``out`` is a folder."""
    from medgen.imaging.evaluation.loading import SourceKind, check_source

    if job.data_args is not None and not isinstance(job.data_args, dict):
        raise ConfigError("data_args", job.data_args, "a mapping of data config settings")
    paths = plain_paths(cfg)
    kind = check_source("samples", str(job.samples))
    if kind == SourceKind.RUN:
        raise ConfigError("samples", str(job.samples), "a folder of NIfTI volumes, not a run")
    for key in ("reference", "train"):
        value = getattr(job, key)
        if value is None and key == "train":
            continue
        if value in (None, "moses"):
            raise ConfigError(key, value, f"{VOLUME_SOURCES} (samples are volumes)")
        check_source(key, value, job.data_args, paths)
    if job.extractor != "encoder":
        if job.weights is None:
            raise ConfigError(
                "weights", None, f"a weights file: extractor={job.extractor} needs one"
            )
        if not job.weights.is_file():
            raise MissingFileError(f"weights={job.weights}: no such file")
    if job.extractor == "slices2d" and job.resnet_depth in (10, 200):
        raise ConfigError("resnet_depth", job.resnet_depth, "18, 34, 50, 101 or 152 for slices2d")
    if not job.intensity_hi > job.intensity_lo:
        raise ConfigError("intensity_hi", job.intensity_hi, f"> intensity_lo={job.intensity_lo}")
    if job.intensity == "percentile" and not 0 <= job.intensity_lo < job.intensity_hi <= 100:
        raise ConfigError("intensity_lo", job.intensity_lo, "percentiles in 0..100")
    if job.out is not None:
        if job.out.is_file() or job.out.suffix == ".json":
            raise ConfigError("out", str(job.out), "a folder for evaluation.json and .png")
        if job.out.resolve() == job.samples.resolve():
            raise UserError(f"out={job.out} is the samples folder: write the evaluation elsewhere")


def plain_paths(cfg: Any) -> dict[str, str]:
    """The ``paths`` a data config may refer to (``${paths.data_dir}``) that resolve here."""
    paths = cfg.get("paths") if hasattr(cfg, "get") else None
    found: dict[str, str] = {}
    for key in ("root_dir", "data_dir", "log_dir", "cache_dir"):
        try:
            if paths is not None and paths.get(key) is not None:
                found[key] = str(paths.get(key))
        except Exception:  # an interpolation that resolves only inside a Hydra run
            continue
    return found


# ------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataJob:
    """``conf/data.yaml``."""

    dataset: Literal["moses", "qm9", "qm9_stereo"] = field(
        metadata={"help": "moses | qm9 | qm9_stereo"}
    )
    wheel_dir: Path | None = None


def check_data(cfg: Any) -> DataJob:
    return read_record(DataJob, cfg)


# -------------------------------------------------------------------------------------- train

PRECISIONS = Literal[
    "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", "16"
]


@dataclass(frozen=True)
class TrainJob:
    """``conf/train.yaml``'s own keys."""

    seed: int | None = field(default=42, metadata=SEED)
    train: bool = True
    test: bool = False
    ckpt_path: str | None = None
    optimized_metric: str | None = None


@dataclass(frozen=True)
class TrainerSettings:
    """The ``trainer`` keys medgen's configs set (others go to Lightning as they are)."""

    accelerator: Literal["cpu", "gpu", "cuda", "mps", "tpu", "auto"] = "cpu"
    devices: int | str | list[int] = 1
    num_nodes: int = field(default=1, metadata=POSITIVE)
    precision: PRECISIONS | Literal[16, 32, 64] = "32-true"
    min_epochs: int | None = field(default=None, metadata={"ge": 0})
    max_epochs: int | None = field(default=None, metadata={"ge": -1})
    max_steps: int = field(default=-1, metadata={"ge": -1})
    check_val_every_n_epoch: int | None = field(default=1, metadata=POSITIVE)
    log_every_n_steps: int = field(default=10, metadata=POSITIVE)
    gradient_clip_val: float | None = field(default=None, metadata={"ge": 0.0})
    accumulate_grad_batches: int = field(default=1, metadata=POSITIVE)
    limit_train_batches: int | float | None = field(default=None, metadata={"ge": 0})
    limit_val_batches: int | float | None = field(default=None, metadata={"ge": 0})
    limit_test_batches: int | float | None = field(default=None, metadata={"ge": 0})
    num_sanity_val_steps: int = field(default=0, metadata={"ge": -1})
    deterministic: bool | Literal["warn"] | None = False
    benchmark: bool | None = False
    max_time: str | dict[str, int] | None = None


def check_train(cfg: Any) -> TrainJob:
    """Check ``medgen train``'s keys, the trainer's, and build the datamodule and model once
    (their constructors check their own arguments); a resumed checkpoint must fit the model."""
    from omegaconf import OmegaConf

    from medgen.utils.checkpoint import load_medgen_checkpoint
    from medgen.utils.validate import MissingKeyError

    job = read_record(TrainJob, cfg)
    trainer = read_record(TrainerSettings, cfg.trainer, prefix="trainer.")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = getattr(trainer, key)
        if isinstance(value, float) and value > 1.0:
            raise ConfigError(f"trainer.{key}", value, "a batch count (integer) or a fraction <= 1")
    if isinstance(trainer.devices, str) and trainer.devices != "auto":
        if not all(part.strip().isdigit() for part in trainer.devices.split(",") if part.strip()):
            raise ConfigError("trainer.devices", trainer.devices, "a count, 'auto' or '0,1,...'")
    if not job.train and not job.test:
        raise ConfigError("train", False, "true, or test=true with ckpt_path=<checkpoint>")
    if not job.train and not job.ckpt_path:
        raise ConfigError("ckpt_path", None, "a checkpoint to test when train=false")
    for key in cfg.model:  # `???` keys of the model config (model=ldm3d's autoencoder)
        if OmegaConf.is_missing(cfg.model, key):
            raise MissingKeyError(f"model.{key}", "value")
    model = instantiate_checked(cfg.model, "model")
    data = instantiate_checked(cfg.data, "data")
    check_model_fits_data(model, data)
    for name, node in (cfg.get("callbacks") or {}).items():
        # medgen's own callbacks check their arguments; Lightning's and the checkpoint writers
        # (a dirpath) need the run folder's path, which is not made yet
        target = str(node.get("_target_", "")) if node is not None else ""
        if target.startswith("medgen.") and "dirpath" not in node:
            instantiate_checked(node, f"callbacks.{name}")
    if job.ckpt_path:
        ckpt_file, ckpt, have = load_medgen_checkpoint(job.ckpt_path)
        if "medgen_pretrained" in ckpt:  # slimmed by medgen.pretrained.slim: nothing to resume
            raise UserError(
                f"ckpt_path={job.ckpt_path} is a shipped model: weights only, without the "
                "optimizer, scheduler and loop states a resumed run needs; sample it with "
                f"`medgen sample ckpt={job.ckpt_path}`, resume from a training run's last.ckpt"
            )
        want = dict(getattr(model, "hparams", {}) or {}).get("kind")
        if want is not None and have != want:
            raise UserError(
                f"ckpt_path={ckpt_file} holds a {have!r} model, but model={want!r}: "
                "resume with the model config it was trained with"
            )
    return job


def check_model_fits_data(model: Any, data: Any) -> None:
    """A model's ``check_data(meta)`` (channels, sizes) on the data's ``planned_meta()``, where
    both exist and the datamodule can describe its data from its settings alone (phantoms):
    e.g. ``data.labels=true`` with a one-channel network is named now, not after the run folder
    is made. Other data are checked by the model's ``setup`` once the data is read. A model of
    molecules given scans (or the other way) is named first."""
    want, have = getattr(model, "data_kind", None), getattr(data, "data_kind", None)
    if want and have and want != have:
        hint = {"molecules": "data=smiles", "scans": "data=phantom"}.get(str(want), "")
        raise UserError(f"{type(model).__name__} (model=) trains on {want}, but "
                        f"{type(data).__name__} (data=) gives {have}: choose data of {want}"
                        + (f", e.g. {hint}" if hint else ""))  # fmt: skip
    plan, fits = getattr(data, "planned_meta", None), getattr(model, "check_data", None)
    if callable(plan) and callable(fits) and (meta := plan()) is not None:
        fits(meta)


def instantiate_checked(node: Any, group: str) -> Any:
    """``hydra.utils.instantiate(node)``: an unexpected or badly typed argument is a
    :class:`UserError` naming the group; the constructor's own UserErrors pass through."""
    import hydra
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise UserError(f"{group}: {cause}") from err
        if cause is None:  # e.g. a _target_ that cannot be imported
            raise UserError(f"{group}: {' '.join(str(err).split())}") from err
        raise


def _plain(cfg: Any, key: str) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        return cfg[key]
    if OmegaConf.is_missing(cfg, key):
        return "???"
    value = cfg[key]
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


# ------------------------------------------------------------------------------------ inspect


@dataclass(frozen=True)
class InspectJob:
    """``conf/inspect.yaml``."""

    path: Path = field(metadata={"help": "a NIfTI, CSV/SMI, SDF, Parquet or JSON file"})
    json: bool = False


def check_inspect(cfg: Any) -> InspectJob:
    """Check ``medgen inspect``'s keys and that the file exists."""
    job = read_record(InspectJob, cfg)
    if job.path.is_dir():
        raise InputFileError(f"path={job.path}: a folder, not a file; name one file of it")
    if not job.path.is_file():
        raise MissingFileError(f"path={job.path}: no such file")
    return job
