"""Scan evaluation of a phantom diffusion run: fast samplers against the real-vs-real floor.

    OMP_NUM_THREADS=1 python experiments/scan_evaluation/run.py \
        --run outputs/runs/phantom32_ddpm --n 16 --samplers ddim:50 --readme

For each ``sampler:steps`` the run's checkpoint (``<run>/checkpoints/last.ckpt`` or ``--ckpt``)
draws samples 0..n-1 with seed 0 (sample i starts from the same x_T whatever the sampler) into
``<out>/<checkpoint sha256[:12]>/<sampler><steps>/`` through ``medgen.generation.sample_to``
(a cohort folder; a rerun resumes it). Each cohort is judged by
``medgen.imaging.evaluation.evaluate_volumes`` against

- reference: n held-out phantoms of the run's own data config (test split, seeds 2,000,000+i);
- train: the run's training phantoms (memorization, and TSTR's real arm on n of them);

and the real-vs-real row puts n validation phantoms (seeds 1,000,000+i, disjoint from both) in
place of the samples: the floor every figure is read against. Writes ``results.json`` and the
model rows' ``evaluation_<row>.png`` beside this file; ``--readme`` rewrites the table in
``README.md`` from ``results.json`` (``--readme-only``: without computing anything).

About 5 minutes for n=16 and DDIM-50 on one CPU core at 32^3 (sampling ~11 s per volume).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="outputs/runs/phantom32_ddpm", help="the training run folder")
    p.add_argument("--ckpt", default=None, help="checkpoint (default <run>/checkpoints/last.ckpt)")
    p.add_argument("--n", type=int, default=16, help="samples (and real volumes) per row")
    p.add_argument("--samplers", nargs="+", default=["ddim:50", "rflow:30"], help="sampler:steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4, help="volumes per sampling batch")
    p.add_argument("--encoder-steps", type=int, default=300)
    p.add_argument("--feature-size", type=int, default=None, help="encoder input size per axis")
    p.add_argument("--tstr-steps", type=int, default=150, help="0: no TSTR")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="outputs/scan_evaluation", help="cohorts and caches")
    p.add_argument(
        "--record", default=None, help="folder for results.json, figures and README.md's table "
        "(default: beside this script)",
    )  # fmt: skip
    p.add_argument("--readme", action="store_true", help="rewrite README.md's table")
    p.add_argument("--readme-only", action="store_true", help="only rewrite README.md's table")
    args = p.parse_args(argv)
    global HERE
    if args.record:
        HERE = Path(args.record).resolve()
    return args


def checkpoint_info(ckpt: Path) -> dict[str, Any]:
    from medgen.utils.checkpoint import load_medgen_checkpoint
    from medgen.utils.provenance import file_sha256

    file, data, _ = load_medgen_checkpoint(ckpt)
    hp = data.get("hyper_parameters") or {}
    scheduler = hp.get("scheduler") or {}
    return {
        "file": str(ckpt),
        "sha256": file_sha256(file),
        "global_step": int(data.get("global_step", -1)),
        "epoch": int(data.get("epoch", -1)),
        "scheduler": str(scheduler.get("_target_", "")).rsplit(".", 1)[-1],
        "prediction_type": scheduler.get("prediction_type"),
    }


def draw(args, generator, ckpt: Path, sha: str, sampler: str, steps: int) -> dict[str, Any]:
    """Sample ``args.n`` volumes into a cohort folder; ``{"folder", "seconds_per_sample"}`` or
    ``{"skipped": reason}`` when the model cannot use the sampler."""
    from medgen.errors import UserError
    from medgen.generation import sample_to
    from medgen.records import Sampler, SampleSettings

    settings = SampleSettings(seed=args.seed, sampler=Sampler(sampler), steps=steps)
    try:
        generator.resolve_settings(settings)
    except UserError as err:
        return {"skipped": str(err)}
    folder = Path(args.out) / sha[:12] / f"{sampler}{steps}"
    summary = sample_to(
        generator, settings, out=folder, checkpoint=ckpt, n=args.n, batch_size=args.batch_size,
        preview=True, trainer_kwargs={"accelerator": "cpu" if args.device == "cpu" else "auto"},
    )  # fmt: skip
    per = summary["seconds_per_sample"] if summary["written"] else None
    return {"folder": str(folder), "seconds_per_sample": per, "drawn_now": summary["written"]}


def row_record(name: str, result: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    d = result["details"]
    mem, t = d.get("memorization", {}), d.get("tstr", {})
    return {
        "row": name,
        **extra,
        "metrics": result["metrics"],
        "extractor": result["extractor"],
        "bands": d.get("bands"),
        "flagged": mem.get("flagged", []),
        "memorization_threshold": mem.get("threshold"),
        "tstr": {k: t.get(k) for k in ("labels", "dice_real", "dice_synthetic", "pairs", "steps")},
        "tissue": t.get("tissue"),
        "ms_ssim": d.get("ms_ssim"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:

    from medgen.generation import load_generator
    from medgen.imaging.evaluation.evaluate import VolumeEvalSettings, evaluate_volumes
    from medgen.imaging.evaluation.loading import load_volumes
    from medgen.imaging.evaluation.report import format_table, write_png
    from medgen.imaging.intensity import IntensityMapping
    from medgen.utils.provenance import provenance

    run_dir = Path(args.run)
    ckpt = Path(args.ckpt) if args.ckpt else run_dir / "checkpoints" / "last.ckpt"
    info = checkpoint_info(ckpt)
    generator, _ = load_generator(ckpt)
    generator.eval()
    cache = Path(args.out) / "cache"
    settings = VolumeEvalSettings(
        encoder_steps=args.encoder_steps, feature_size=args.feature_size, tstr=args.tstr_steps > 0,
        tstr_steps=max(1, args.tstr_steps), seed=args.seed, device=args.device, progress=False,
    )  # fmt: skip
    # files map back with the training data's window; data configs use their own (the same)
    mapping = IntensityMapping.from_dict(dict(generator.data_meta.intensity))
    common: dict[str, Any] = dict(intensity=mapping, progress=False)

    real_b = load_volumes(run_dir, name="samples", split="val", data_args={"num_val": args.n},
                          **common)  # fmt: skip
    reference = load_volumes(run_dir, name="reference", like=real_b, **common)
    train = load_volumes(run_dir, name="train", **common)

    rows = []
    for spec in args.samplers:
        sampler, _, steps = spec.partition(":")
        name = f"{sampler.upper()}-{steps}"
        t0 = time.perf_counter()
        drawn = draw(args, generator, ckpt, info["sha256"], sampler, int(steps))
        if "skipped" in drawn:
            print(f"{name}: skipped: {drawn['skipped']}", file=sys.stderr)
            rows.append({"row": name, "skipped": drawn["skipped"]})
            continue
        samples = load_volumes(drawn["folder"], name="samples", limit=args.n, **common)
        result = evaluate_volumes(samples, reference, train, settings, cache_dir=cache)
        seconds = time.perf_counter() - t0
        print(f"\n{name} (checkpoint step {info['global_step']}):\n{format_table(result)}")
        write_png(HERE, result, samples, reference, train)
        (HERE / "evaluation.png").rename(HERE / f"evaluation_{sampler}{steps}.png")
        rows.append(row_record(name, result, {**drawn, "seconds": round(seconds, 1)}))

    t0 = time.perf_counter()
    result = evaluate_volumes(real_b, reference, train, settings, cache_dir=cache)
    print(f"\nreal vs real:\n{format_table(result)}")
    extra = {"seconds": round(time.perf_counter() - t0, 1), "source": real_b.source}
    rows.append(row_record("real vs real", result, extra))

    record = {
        "checkpoint": info,
        "n": args.n,
        "seed": args.seed,
        "reference": reference.source,
        "train": {"source": train.source, "n": len(train)},
        "settings": settings.to_dict(),
        "command": "python experiments/scan_evaluation/run.py " + shlex.join(sys.argv[1:]),
        "rows": rows,
        # which machine ran it is not part of the record
        "provenance": {
            k: v for k, v in provenance(vars(args), seed=args.seed).items() if k != "host"
        },  # fmt: skip
    }
    (HERE / "results.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def readme_table(record: dict[str, Any]) -> str:
    """Markdown tables of ``results.json``: one row per sampler and the real-vs-real floor."""
    c = record["checkpoint"]
    lines = [
        f"Checkpoint `{Path(c['file']).name}`: global step {c['global_step']} (epoch "
        f"{c['epoch']}), sha256 `{c['sha256'][:12]}`; n = {record['n']} per row, seed "
        f"{record['seed']}; reference `{record['reference']}`, train `{record['train']['source']}`"
        f" ({record['train']['n']} volumes). Command: `{record['command']}`",
        "",
        "| row | FD ↓ | MMD ↓ | HU JS ↓ | band TV ↓ | MS-SSIM (ref) ≈ | flagged ↓ | NN ratio ~1 "
        "| Dice real-arm / synthetic ↑ | s per sample |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['row']} | skipped: {r['skipped']} |" + " |" * 8)
            continue
        m = r["metrics"]
        per = r.get("seconds_per_sample")
        lines.append(
            f"| {r['row']} | {_f(m['fidelity/frechet'])} | {_f(m['fidelity/mmd'], 2)} "
            f"| {_f(m['fidelity/hu_js'])} | {_f(m['fidelity/band_tv'])} "
            f"| {_f(m['diversity/ms_ssim'])} ({_f(m['diversity/ms_ssim_reference'])}) "
            f"| {len(r['flagged'])}/{record['n']} | {_f(m['memorization/distance_ratio'])} "
            f"| {_f(m.get('tstr/dice_real'))} / {_f(m.get('tstr/dice_synthetic'))} "
            f"| {_f(per, 1) if per else '-'} |"
        )
    model = next((r for r in record["rows"] if "skipped" not in r and r["row"] != "real vs real"),
                 None)  # fmt: skip
    floor = record["rows"][-1]
    if model and model.get("tissue"):
        lines += [
            "",
            f"Per tissue, {model['row']} samples labelled by the real-arm network vs the "
            "reference phantoms' true labels vs the phantom generator's table (mean mL per scan, "
            "mean HU):",
            "",
            "| tissue | samples mL | reference mL | samples HU | reference HU | table HU "
            "| real-vs-real Dice: real arm / val phantoms |",
            "|---|---|---|---|---|---|---|",
        ]
        labels = floor["tstr"].get("labels") or []
        order = ["air", *labels]  # label order (JSON keeps the names sorted)
        rank = {name: i for i, name in enumerate(order)}
        for name, t in sorted(model["tissue"].items(), key=lambda kv: rank.get(kv[0], 99)):
            k = labels.index(name) if name in labels else None
            dice = "-" if k is None else (
                f"{_f((floor['tstr'].get('dice_real') or [None] * (k + 1))[k], 2)} / "
                f"{_f((floor['tstr'].get('dice_synthetic') or [None] * (k + 1))[k], 2)}"
            )  # fmt: skip
            lines.append(
                f"| {name} | {_f(t['samples_ml'], 0)} | {_f(t['reference_ml'], 0)} "
                f"| {_f(t['samples_hu'], 0)} | {_f(t['reference_hu'], 0)} "
                f"| {_f(t['table_hu'], 0)} | {dice} |"
            )
    return "\n".join(lines)


def write_readme(record: dict[str, Any]) -> None:
    path = HERE / "README.md"
    text = path.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}\n{readme_table(record)}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.readme_only:
        write_readme(json.loads((HERE / "results.json").read_text()))
        return
    from medgen.utils.logging import configure_logging

    configure_logging()
    record = run(args)
    print("\n" + readme_table(record))
    if args.readme:
        write_readme(record)


if __name__ == "__main__":
    main()
