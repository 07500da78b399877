"""Turn a training checkpoint into a shippable one and register it.

    python -m medgen.pretrained.slim outputs/runs/phantom32/checkpoints/last.ckpt phantom32 \\
        --experiment experiments/phantom32_ddpm --description "3D DDPM, 32^3 CT phantoms" \\
        --hardware "2 shared CPU cores" --data-licence "procedural (medgen, Apache-2.0)" \\
        --metric val/loss_ema=0.031

A Lightning checkpoint holds the weights twice (the network and its EMA copy) plus optimizer,
scheduler, loop and callback states. The slimmed file keeps ``hyper_parameters`` and one copy of
the weights: where an EMA copy exists its weights become the network's own and the copy is not
stored (``medgen_pretrained.copies`` says which keys :func:`expand` refills on load, so every
``from_checkpoint`` gets the state dict it expects, EMA included). Weights are float32, or
float16 storage with ``--float16`` (cast back to float32 on load). The file is refused above
``--max-mb``, written atomically as ``<name>.ckpt`` beside ``registry.json``, and its entry (sha256,
size, provenance, metrics) added or replaced.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medgen.errors import ConfigError, InputFileError, MissingFileError, UserError
from medgen.pretrained import NAME, Entry, read_registry, registry_dir, write_registry

#: the checkpoint key that marks a slimmed file and says how to expand it
KEY = "medgen_pretrained"
FORMAT = 1
DEFAULT_MAX_MB = 10.0
_EMA_BUFFERS = ("num_updates", "last_step")  # medgen.imaging.ema.EMA's own buffers
# records beside the weights that a shipped file keeps (molecule property heads, latent prior)
KEPT = ("property_heads", "latent_prior")


# ------------------------------------------------------------------------- the slimmed layout


def ema_copies(state: Mapping[str, Any]) -> dict[str, str]:
    """``{ema prefix: network prefix}`` for each EMA copy in a state dict, e.g.
    ``{"ema.module.": "unet."}``: the network is the one submodule whose keys and shapes are the
    EMA copy's. An EMA copy that matches no submodule is left as it is; one that matches several
    is a :class:`~medgen.errors.UserError`."""
    copies: dict[str, str] = {}
    for key in state:
        if not key.endswith(_EMA_BUFFERS[0]):
            continue
        base = key[: -len(_EMA_BUFFERS[0])]  # "ema."
        inner = base + "module."
        tracked = {k[len(inner) :]: v for k, v in state.items() if k.startswith(inner)}
        if base + _EMA_BUFFERS[1] not in state or not tracked:
            continue
        first = next(iter(tracked))
        candidates = {
            k[: len(k) - len(first)]
            for k in state
            if k.endswith("." + first) and not k.startswith(base)
        }
        matches = sorted(p for p in candidates if _same_layout(state, p, base, tracked))
        if len(matches) > 1:
            raise UserError(f"the EMA copy {inner}* fits several networks ({matches}): "
                            "cannot tell which one it tracks")  # fmt: skip
        if matches:
            copies[inner] = matches[0]
    return copies


def _same_layout(state: Mapping[str, Any], prefix: str, base: str, tracked: Mapping) -> bool:
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if base.startswith(prefix) or own.keys() != tracked.keys():
        return False
    return all(_shape(own[k]) == _shape(v) for k, v in tracked.items())


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def slim(ckpt: Mapping[str, Any], *, name: str, float16: bool = False) -> dict[str, Any]:
    """The shippable form of a medgen checkpoint dict: ``state_dict`` (EMA weights as the
    network's, stored once; float16 with ``float16``), ``hyper_parameters`` and the
    :data:`KEY` record. Optimizer, scheduler, loop and callback states are dropped."""
    state = dict(ckpt["state_dict"])
    copies = ema_copies(state)
    for inner, network in copies.items():
        for key in [k for k in state if k.startswith(inner)]:
            state[network + key[len(inner) :]] = state.pop(key)  # the EMA weights win
    dtype = torch.float16 if float16 else torch.float32
    state = {
        k: v.detach().to(dtype).contiguous().clone() if _is_float(v) else v
        for k, v in state.items()
    }
    record = {
        "format": FORMAT,
        "name": name,
        "copies": copies,
        "storage_dtype": "float16" if float16 else "float32",
        "global_step": _global_step(ckpt),
    }
    out = {"state_dict": state, "hyper_parameters": dict(ckpt["hyper_parameters"]), KEY: record}
    out.update({k: ckpt[k] for k in KEPT if k in ckpt})
    return out


def _global_step(ckpt: Mapping[str, Any]) -> Any:
    """A training checkpoint's ``global_step``, or the one a shipped (slimmed) file records."""
    if ckpt.get("global_step") is not None:
        return ckpt["global_step"]
    record = ckpt.get(KEY)
    return record.get("global_step") if isinstance(record, Mapping) else None


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def expand(ckpt: dict[str, Any], file: str | Path) -> dict[str, Any]:
    """A slimmed checkpoint dict as ``from_checkpoint`` expects it: float32 weights and every EMA
    copy refilled from its network's weights. Other checkpoints are returned as they are."""
    record = ckpt.get(KEY) if isinstance(ckpt, Mapping) else None
    if record is None or not isinstance(ckpt.get("state_dict"), Mapping):
        return ckpt  # not slimmed; or not a medgen checkpoint, which the caller reports
    copies = record.get("copies") if isinstance(record, Mapping) else None
    if not isinstance(copies, Mapping) or record.get("format") != FORMAT:
        raise InputFileError(f"checkpoint {file}: its {KEY} record is not format {FORMAT}")
    state = {
        k: v.float() if _is_float(v) and v.dtype != torch.float32 else v
        for k, v in ckpt["state_dict"].items()
    }
    for inner, network in copies.items():
        for key in [k for k in state if k.startswith(str(network))]:
            state[str(inner) + key[len(network) :]] = state[key]  # load_state_dict copies it
    return {**ckpt, "state_dict": state}


def is_slimmed(ckpt: Any) -> bool:
    """Whether a checkpoint dict is a shippable one (weights only, no training state)."""
    return isinstance(ckpt, Mapping) and KEY in ckpt


# ---------------------------------------------------------------------- make and register one


def make_pretrained(
    source: str | Path,
    name: str,
    *,
    experiment: str,
    description: str,
    hardware: str,
    data_licence: str,
    metrics: Mapping[str, float] | None = None,
    commit: str | None = None,
    wall_time_s: float | None = None,
    float16: bool = False,
    max_mb: float = DEFAULT_MAX_MB,
    folder: str | Path | None = None,
) -> Entry:
    """Slim the training checkpoint ``source`` (file or run dir) into ``<folder>/<name>.ckpt``
    and add or replace its entry in ``<folder>/registry.json`` (``folder``: the registry's).

    ``commit`` defaults to the training run's (its ``provenance.json``), ``wall_time_s`` to the
    train and validation time its Timer callback recorded. The slimmed file must rebuild as a
    generator before it is written; above ``max_mb`` megabytes it is refused.
    """
    from medgen.generation import load_generator, module_path
    from medgen.utils.atomic import atomic_path
    from medgen.utils.checkpoint import load_medgen_checkpoint
    from medgen.utils.provenance import file_sha256

    if not NAME.match(name):
        raise ConfigError("name", name, "lower-case letters, digits and _ (e.g. phantom32)")
    if not max_mb > 0:
        raise ConfigError("max_mb", max_mb, "a size in MB > 0")
    if Path(experiment).is_absolute() or Path(experiment).parts[:1] != ("experiments",):
        raise ConfigError("experiment", experiment, "a folder under experiments/ (relative)")
    if not Path(experiment).is_dir():
        raise MissingFileError(f"experiment={experiment}: no such folder")
    file, ckpt, kind = load_medgen_checkpoint(source)
    module = module_path(ckpt)
    if module is None:
        raise InputFileError(f"checkpoint {file} records no generator module")
    slimmed = slim(ckpt, name=name, float16=float16)
    buffer = io.BytesIO()
    torch.save(slimmed, buffer)
    data = buffer.getvalue()
    size_mb = len(data) / 1e6
    if size_mb > max_mb:
        hint = "" if float16 else "; --float16 halves it"
        raise UserError(f"{name}: the slimmed checkpoint is {size_mb:.1f} MB, over "
                        f"--max-mb {max_mb:g}{hint}")  # fmt: skip
    folder = Path(folder) if folder is not None else registry_dir()
    target = folder / f"{name}.ckpt"
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
        generator, _ = load_generator(tmp)  # it must load before it is shipped
    entries = read_registry(folder)
    entries[name] = Entry(
        name=name,
        file=target.name,
        sha256=file_sha256(target),
        size_bytes=len(data),
        description=description,
        kind=kind,
        module=module,
        output=str(generator.output),
        experiment=Path(experiment).as_posix(),
        commit=commit or _run_record(file).get("git_commit"),
        hardware=hardware,
        wall_time_s=wall_time_s if wall_time_s is not None else _train_seconds(ckpt),
        data_licence=data_licence,
        metrics=dict(metrics or {}),
        parameters=sum(v.numel() for v in slimmed["state_dict"].values() if _is_float(v)),
        storage_dtype=slimmed[KEY]["storage_dtype"],
        global_step=_global_step(ckpt),
        source_sha256=file_sha256(file),
    )
    write_registry(entries, folder)
    return entries[name]


def _run_record(ckpt_file: Path) -> dict[str, Any]:
    """The training run's ``provenance.json`` (beside the checkpoint or one folder up)."""
    for run in Path(ckpt_file).resolve().parents[:2]:
        prov = run / "provenance.json"
        if prov.is_file():
            try:
                found = json.loads(prov.read_text(encoding="utf-8"))
            except ValueError:
                return {}
            return found if isinstance(found, dict) else {}
    return {}


def _train_seconds(ckpt: Mapping[str, Any]) -> float | None:
    """Train + validation seconds from Lightning's Timer callback state, when there is one."""
    for key, value in (ckpt.get("callbacks") or {}).items():
        elapsed = value.get("time_elapsed") if str(key).startswith("Timer") else None
        if isinstance(elapsed, Mapping):
            return round(float(elapsed.get("train", 0.0)) + float(elapsed.get("validate", 0.0)), 1)
    return None


# ------------------------------------------------------------------------------------ the CLI


def parse_metrics(items: Sequence[str]) -> dict[str, float]:
    """``["FCD=1.25", "validity=1.0"]`` -> ``{"FCD": 1.25, "validity": 1.0}``."""
    metrics: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError(item)
            metrics[key.strip()] = float(value)
        except ValueError:
            raise ConfigError("--metric", item, "name=number, e.g. FCD=1.25") from None
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medgen.pretrained.slim",
        description="slim a training checkpoint into medgen/pretrained/<name>.ckpt and register it",
    )
    parser.add_argument("checkpoint", help="a training checkpoint (.ckpt) or run dir")
    parser.add_argument("name", help="the model's name: ckpt=pretrained:<name>")
    parser.add_argument("--experiment", required=True, help="experiments/<study> that made it")
    parser.add_argument("--description", required=True, help="what it is, in a few words")
    parser.add_argument("--hardware", required=True, help="what it was trained on")
    parser.add_argument("--data-licence", required=True, help="the training data's licence")
    parser.add_argument("--metric", action="append", default=[], help="name=value (repeat)")
    parser.add_argument("--commit", help="the training commit (default: the run's provenance)")
    parser.add_argument("--wall-time-s", type=float, help="training seconds (default: its Timer)")
    parser.add_argument("--float16", action="store_true", help="store the weights in float16")
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB, help="refuse above this")
    parser.add_argument("--out-dir", help="registry folder (default: medgen/pretrained/)")
    args = parser.parse_args(argv)
    try:
        found = make_pretrained(
            args.checkpoint,
            args.name,
            experiment=args.experiment,
            description=args.description,
            hardware=args.hardware,
            data_licence=args.data_licence,
            metrics=parse_metrics(args.metric),
            commit=args.commit,
            wall_time_s=args.wall_time_s,
            float16=args.float16,
            max_mb=args.max_mb,
            folder=args.out_dir,
        )
    except UserError as err:
        print(f"medgen.pretrained.slim: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    from medgen.utils.checkpoint import resolve_checkpoint

    folder = Path(args.out_dir) if args.out_dir else registry_dir()
    source = resolve_checkpoint(args.checkpoint)
    print(f"{folder / found.file}: {found.size_bytes / 1e6:.2f} MB ({found.storage_dtype}, "
          f"{found.parameters:,} weights) from {source} ({source.stat().st_size / 1e6:.2f} MB); "
          f"sha256 {found.sha256}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
