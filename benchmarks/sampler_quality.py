"""Quality against cost of each sampler and step count, scored by the scan evaluation.

Draws ``--n`` volumes per row from the checkpoint ``--ckpt`` (samples ``0..n-1`` of one seed, so
every row starts from the same x_T), times them, and scores each row against one reference set
with :func:`medgen.imaging.evaluation.evaluate.evaluate_volumes` (Fréchet distance and MMD of the
contrastive encoder's features, trained once on the reference; Jensen-Shannon distance of the
intensity histograms). A ``real`` row scores a second real set of the same N (disjoint subjects)
against the reference: the floor that sampler rows should be read against. Wall time is compared
with the first row (DDIM 50 for a DDPM-trained model, RFlow 30 for an RFlow-trained one).

    python benchmarks/sampler_quality.py --ckpt outputs/train/<run>/checkpoints/last.ckpt --n 8
    python benchmarks/sampler_quality.py --ckpt <run> --full               # adds DDPM 1000
    python benchmarks/sampler_quality.py --ckpt <run> --rows ddim:50 heun:10 ddim:20:eta=0.5
    # how far each deterministic row is from the ODE solution (a 100-step DPM-Solver++ run)
    python benchmarks/sampler_quality.py --ckpt <run> --n 2 --ode-reference dpmpp:100 --skip-eval

The reference is the training run's own test split when the checkpoint sits in a run folder
(``<run>/config.yaml``), else ``--reference`` (a data config such as ``phantom``, a cohort folder
or a datalist, as ``medgen evaluate reference=`` takes). The real floor is the same source's
validation split (or, for a folder or datalist, ``--real``).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medgen.records import Sampler, SampleSettings

ROWS = {  # (sampler, steps, eta, shift): the first row is the reference for wall time
    "ddpm": ["ddim:50", "ddim:20", "ddim:10", "ddim:20:eta=0.5", "dpmpp:20", "dpmpp:10"],
    "rflow": ["rflow:30", "rflow:20", "rflow:10", "rflow:10:shift=3", "heun:10", "heun:5"],
}
FULL = {"ddpm": ["ddpm:1000"], "rflow": []}


@dataclass(frozen=True)
class Row:
    sampler: Sampler
    steps: int
    eta: float | None = None
    shift: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> Row:
        """``sampler:steps[:eta=E][:shift=S]``."""
        sampler, steps, *rest = spec.split(":")
        extra = {k: float(v) for k, v in (part.split("=", 1) for part in rest)}
        unknown = set(extra) - {"eta", "shift"}
        if unknown:
            raise SystemExit(f"row {spec!r}: unknown keys {sorted(unknown)} (eta=, shift=)")
        return cls(Sampler(sampler), int(steps), extra.get("eta"), extra.get("shift", 1.0))

    def settings(self, seed: int) -> SampleSettings:
        return SampleSettings(
            seed=seed, sampler=self.sampler, steps=self.steps, eta=self.eta, shift=self.shift
        )

    def calls(self) -> int:
        """Network evaluations per sample (Heun: two per step but the last)."""
        return 2 * self.steps - 1 if self.sampler == Sampler.HEUN else self.steps


def sample_set(x: torch.Tensor, meta: Any, name: str) -> Any:
    """Generated volumes (N, C, D, H, W) in [-1, 1] as an evaluation set (the image channel)."""
    from medgen.imaging.evaluation.loading import VolumeSet
    from medgen.imaging.intensity import IntensityMapping

    images = x[:, :1].float().contiguous()
    keys = [hashlib.sha256(v.numpy().tobytes()).hexdigest() for v in images]
    return VolumeSet(
        name, name, images, [f"{name}:{i}" for i in range(len(images))], keys,
        IntensityMapping.from_dict(dict(meta.intensity)),
        tuple(float(s) for s in meta.spacing),  # type: ignore[arg-type]
    )  # fmt: skip


def real_sets(args: argparse.Namespace, like: Any, intensity: Any) -> tuple[Any, Any]:
    """``(reference, real floor)``: two real sets of N disjoint subjects."""
    from medgen.imaging.evaluation.loading import SourceKind, load_volumes, source_kind

    run = Path(args.ckpt).expanduser()
    run = run if run.is_dir() else run.parent.parent
    spec = str(run) if (run / "config.yaml").is_file() else args.reference
    common: dict[str, Any] = dict(intensity=intensity, like=like, progress=False)
    if source_kind(spec) in (SourceKind.DATA_CONFIG, SourceKind.RUN):
        sizes = {"num_train": 2, "num_val": args.n, "num_test": args.n}
        reference = load_volumes(spec, name="reference", data_args=sizes, **common)
        real = load_volumes(spec, name="real", data_args=sizes, split="val", **common)
        return reference, real
    if args.real is None:
        raise SystemExit(f"--reference {spec} is a folder or datalist: give --real as well")
    reference = load_volumes(spec, name="reference", limit=args.n, **common)
    return reference, load_volumes(args.real, name="real", limit=args.n, **common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint file or run dir")
    parser.add_argument("--n", type=int, default=8, help="volumes per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", help="sampler:steps[:eta=E][:shift=S] ...")
    parser.add_argument("--full", action="store_true", help="add DDPM with every timestep")
    parser.add_argument("--reference", default="phantom", help="when the ckpt is not in a run")
    parser.add_argument("--real", default=None, help="second real set for a folder reference")
    parser.add_argument("--batch-size", type=int, default=None, help="default: n")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--encoder-steps", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--ode-reference", default=None, metavar="ROW",
        help="a many-step deterministic row (e.g. dpmpp:100): adds each row's mean |difference| "
        "to it in source units, the error of solving the same ODE from the same x_T",
    )  # fmt: skip
    parser.add_argument("--skip-eval", action="store_true", help="no FD / MMD / HU JS columns")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from medgen.generation import load_generator
    from medgen.imaging.api import generate_volumes
    from medgen.imaging.evaluation.evaluate import VolumeEvalSettings, evaluate_volumes
    from medgen.utils.atomic import atomic_write_json
    from medgen.utils.provenance import file_sha256

    model: Any  # a DiffusionModule (or any volume generator with data_meta and objective)
    model, file = load_generator(args.ckpt)
    objective = str(getattr(model, "objective", "ddpm"))
    specs = args.rows or [*ROWS[objective], *(FULL[objective] if args.full else [])]
    rows = [Row.parse(s) for s in specs]
    meta = model.data_meta
    ckpt = torch.load(file, weights_only=True, map_location="cpu")
    trained = f"epoch {ckpt.get('epoch')}, global step {ckpt.get('global_step')}"
    del ckpt
    print(
        f"checkpoint {file} (sha256 {file_sha256(file)[:12]}, {trained}), "
        f"{list(meta.spatial_size)} voxels, n={args.n} per row, seed {args.seed}, "
        f"device {args.device}, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    batch = args.batch_size or args.n
    warm = model.resolve_settings(rows[0].settings(args.seed)).replace(steps=1)
    generate_volumes(model, 1, warm, device=args.device)  # warm-up
    drawn = []
    for row in rows:
        settings = model.resolve_settings(row.settings(args.seed))
        start = time.perf_counter()
        x = generate_volumes(model, args.n, settings, batch_size=batch, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.n
        drawn.append((row, seconds, x))
        print(f"  {row.sampler} {row.steps} eta={row.eta} shift={row.shift}: "
              f"{seconds:.2f} s/sample", flush=True)  # fmt: skip

    ode = None
    if args.ode_reference:
        ref_row = Row.parse(args.ode_reference)
        settings = model.resolve_settings(ref_row.settings(args.seed))
        x = generate_volumes(model, args.n, settings, batch_size=batch, device=args.device)
        ode = (ref_row, sample_set(x, meta, "ode").source_units())

    table = [_row_values(row, secs, drawn[0][1]) for row, secs, _ in drawn]
    if ode is not None:
        for values, (_, _, x) in zip(table, drawn, strict=True):
            diff = sample_set(x, meta, "samples").source_units() - ode[1]
            values[f"mean abs diff vs {ode[0].sampler}-{ode[0].steps}"] = float(diff.abs().mean())
    floor = None
    if not args.skip_eval:
        like = sample_set(drawn[0][2], meta, "samples")
        reference, real = real_sets(args, like, like.intensity)
        eval_settings = VolumeEvalSettings(
            encoder_steps=args.encoder_steps, seed=args.seed, progress=False,
            device="cuda" if args.device.startswith("cuda") else "cpu",
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as cache:

            def scores(vs: Any) -> dict[str, float | None]:
                m = evaluate_volumes(vs, reference, None, eval_settings, cache_dir=Path(cache))
                keys = {"FD": "fidelity/frechet", "MMD": "fidelity/mmd", "HU JS": "fidelity/hu_js"}
                return {k: m["metrics"][v] for k, v in keys.items()}

            floor = scores(real)
            for values, (_, _, x) in zip(table, drawn, strict=True):
                values.update(scores(sample_set(x, meta, "samples")))
        print(f"\nreference {reference.source} ({len(reference)} volumes), real {real.source}")
    ref = f"{rows[0].sampler.upper()}-{rows[0].steps}"
    columns = [k for k in table[0] if k != "time"] + [f"time vs {ref}"]
    print("\n| " + " | ".join(columns) + " |")
    print("| --- | " + " | ".join("---:" for _ in columns[1:]) + " |")
    if floor is not None:
        cells = [floor.get(k) if k in floor else "" for k in columns[1:]]
        print("| real (floor) | " + " | ".join(_cell(c) for c in cells) + " |")
    for values in table:
        cells = [values.get(k) for k in columns[1:-1]] + [values["time"]]
        print(f"| {values['sampler']} | " + " | ".join(_cell(c) for c in cells) + " |")
    if args.json:
        atomic_write_json(
            args.json,
            {"checkpoint": str(file), "trained": trained, "n": args.n, "seed": args.seed,
             "rows": table, "real_floor": floor},
        )  # fmt: skip


def _row_values(row: Row, seconds: float, reference_seconds: float) -> dict[str, Any]:
    return {
        "sampler": str(row.sampler),
        "steps": row.steps,
        "eta": row.eta,
        "shift": row.shift,
        "network calls": row.calls(),
        "s / sample": seconds,
        "time": seconds / reference_seconds,
    }


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return format(value, ".3g")
    return str(value)


if __name__ == "__main__":
    main()
