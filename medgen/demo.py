"""``make demo`` / ``python -m medgen.demo [folder]``: the quickstart, end to end, on embedded data.

1. shipped models first (seconds): when the registry (:mod:`medgen.pretrained`) lists them,
   ``phantom32`` draws 4 volumes and ``moses`` 1,000 molecules, which are evaluated against
   held-out molecules of the embedded MOSES sample (the full MOSES table is in experiments/);
   a model that is not registered is one line and the demo goes on;
2. the loop (a few minutes on CPU): train the 3D diffusion model briefly on procedural CT
   phantoms (32^3), sample a cohort from it (NIfTI, sidecars, manifest, datalist, preview) and
   evaluate it against held-out phantoms; train the molecule graph VAE briefly on the embedded
   MOSES sample, sample molecules, screen them (``medgen screen``) and evaluate them;
3. a short report (:func:`report`, also ``<folder>/REPORT.md``), read from the metric files that
   the commands wrote.

Each step is the real ``medgen`` command, printed with its wall time.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

#: the registry names the demo samples from, when they are registered
SCAN_MODEL, MOLECULE_MODEL = "phantom32", "moses"
EMBEDDED = Path(__file__).resolve().parent / "molecules" / "resources" / "moses_sample.smi"
#: the brief graph VAE trains on the embedded sample's first rows; its last rows (never trained
#: on) are the molecules' reference. Their statistics (ChemNet included) are computed once and
#: cached: all 5,000 rows cost minutes of CPU on the first run, 1,000 a fifth of that.
MOLECULE_TRAIN_ROWS, REFERENCE_ROWS = 2000, 1000
SCREEN_RULES = ("lipinski", "veber", "pains")
# the brief cohort is scored against held-out phantoms with a short contrastive-encoder fit
# (the default 300 steps is the study setting of experiments/scan_evaluation/)
SCAN_EVAL_ENCODER_STEPS = 50


@dataclass(frozen=True)
class Layout:
    """Where each demo output goes, below one folder ``root``."""

    root: Path

    @property
    def pretrained_scans(self) -> Path:
        return self.root / "pretrained_scans"

    @property
    def pretrained_molecules(self) -> Path:
        return self.root / "pretrained_molecules" / "generated.csv"

    @property
    def pretrained_metrics(self) -> Path:
        return self.root / "pretrained_molecules" / "metrics.json"

    @property
    def pretrained_scan_evaluation(self) -> Path:
        return self.root / "pretrained_scan_evaluation"

    @property
    def scan_train(self) -> Path:
        return self.root / "scan_train"

    @property
    def scans(self) -> Path:
        return self.root / "synthetic_scans"

    @property
    def scan_evaluation(self) -> Path:
        return self.root / "scan_evaluation"  # evaluation.json and evaluation.png

    @property
    def molecule_train(self) -> Path:
        return self.root / "molecule_train"

    @property
    def molecules(self) -> Path:
        return self.root / "molecules" / "generated.csv"

    @property
    def screened(self) -> Path:
        return self.root / "molecules" / "screened.csv"

    @property
    def screen_summary(self) -> Path:
        from medgen.chem.paths import summary_path

        return summary_path(self.screened)

    @property
    def metrics(self) -> Path:
        return self.root / "molecules" / "metrics.json"

    @property
    def reference(self) -> Path:
        return self.root / "reference_molecules.smi"

    @property
    def report(self) -> Path:
        return self.root / "REPORT.md"


@dataclass
class Steps:
    """The ``medgen`` commands run so far and their wall times (seconds)."""

    times: list[tuple[str, float]] = field(default_factory=list)

    def run(self, label: str, *args: str) -> None:
        print(f"\n[{label}] $ medgen {' '.join(args)}", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "medgen", *args])
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"demo step failed (exit {result.returncode}): medgen {' '.join(args)}")
        print(f"[{label}] {seconds:.0f} s", flush=True)
        self.times.append((label, seconds))


# ------------------------------------------------------------------------------------ steps


def write_reference(out: Path, source: Path = EMBEDDED, rows: int = REFERENCE_ROWS) -> Path:
    """The last ``rows`` SMILES of ``source`` (one a line) into ``out``: a held-out reference
    whose bytes, and so its cached statistics, are the same in every demo."""
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) < MOLECULE_TRAIN_ROWS + rows:
        raise ValueError(f"{source} holds {len(lines)} SMILES; the demo needs "
                         f"{MOLECULE_TRAIN_ROWS + rows}")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines[-rows:]) + "\n", encoding="utf-8")
    return out


def pretrained_steps(layout: Layout, steps: Steps, registered: set[str]) -> dict[str, str]:
    """Sample (and evaluate) the shipped models that are registered; returns ``{name: why it
    was skipped}`` for those that are not."""
    skipped: dict[str, str] = {}
    if SCAN_MODEL in registered:
        steps.run(
            "pretrained scans",
            "sample", f"ckpt=pretrained:{SCAN_MODEL}", "n=4", "sampler=ddim", "steps=25",
            "seed=0", f"out={layout.pretrained_scans}",
            f"hydra.run.dir={layout.root}/runs/pretrained_scan_sample",
        )  # fmt: skip
        # against as many held-out phantoms of the default data config (no memorization check:
        # that would generate its 512 training phantoms)
        steps.run(
            "pretrained scan evaluate",
            "evaluate", f"samples={layout.pretrained_scans}", "reference=phantom",
            f"encoder_steps={SCAN_EVAL_ENCODER_STEPS}", "progress=false",
            f"out={layout.pretrained_scan_evaluation}",
        )  # fmt: skip
    else:
        skipped[SCAN_MODEL] = "not registered (no shipped 3D diffusion model yet)"
    if MOLECULE_MODEL in registered:
        layout.pretrained_molecules.parent.mkdir(parents=True, exist_ok=True)
        steps.run(
            "pretrained molecules",
            "sample", f"ckpt=pretrained:{MOLECULE_MODEL}", "n=1000", "seed=0",
            f"out={layout.pretrained_molecules}",
            f"hydra.run.dir={layout.root}/runs/pretrained_molecule_sample",
        )  # fmt: skip
        # against MOSES test (176 k molecules) the nearest-neighbour search alone takes minutes on
        # 2 cores; the demo compares with held-out embedded molecules, the full MOSES table at
        # 30,000 samples is in experiments/moses_graph_vae/
        against = [f"reference={layout.reference}", f"train={EMBEDDED}"]
        steps.run(
            "pretrained evaluate",
            "evaluate", f"samples={layout.pretrained_molecules}", *against, "k=[100,1000]",
            "kl_size=1000", f"out={layout.pretrained_metrics}",
        )  # fmt: skip
    else:
        skipped[MOLECULE_MODEL] = "not registered (no shipped molecule model yet)"
    for name, why in skipped.items():
        print(f"\npretrained:{name} {why}: skipped", flush=True)
    return skipped


def loop_steps(layout: Layout, steps: Steps) -> None:
    """Train both models briefly, sample, evaluate the cohort, screen and evaluate molecules."""
    root = layout.root
    # about 160 optimizer steps: enough for the torso outline and the dark lungs to appear
    steps.run(
        "train scans",
        "train", "experiment=phantom32_ddpm", "data.num_train=128", "trainer.max_epochs=5",
        "callbacks.scan_preview.every_n_epochs=5", f"hydra.run.dir={layout.scan_train}",
    )  # fmt: skip
    steps.run(
        "sample scans",
        "sample", f"ckpt={layout.scan_train}", "n=4", "sampler=ddim", "steps=25", "seed=0",
        f"out={layout.scans}", f"hydra.run.dir={root}/runs/scan_sample",
    )  # fmt: skip
    # against held-out phantoms of the run's own data config; memorization against its 128
    # training phantoms
    steps.run(
        "evaluate scans",
        "evaluate", f"samples={layout.scans}", f"reference={layout.scan_train}",
        f"train={layout.scan_train}", f"encoder_steps={SCAN_EVAL_ENCODER_STEPS}",
        "progress=false", f"out={layout.scan_evaluation}",
    )  # fmt: skip
    steps.run(
        "train molecules",
        "train", "experiment=smiles_graph_vae_quick", "debug=fast",
        f"data.limit={MOLECULE_TRAIN_ROWS}", "trainer.limit_train_batches=20",
        f"hydra.run.dir={layout.molecule_train}",
    )  # fmt: skip
    layout.molecules.parent.mkdir(parents=True, exist_ok=True)  # `out` files need their folder
    steps.run(
        "sample molecules",
        "sample", f"ckpt={layout.molecule_train}", "n=500", "seed=0", f"out={layout.molecules}",
        f"hydra.run.dir={root}/runs/molecule_sample",
    )  # fmt: skip
    steps.run(
        "screen molecules",
        "screen", f"input={layout.molecules}", f"out={layout.screened}",
        f"rules=[{','.join(SCREEN_RULES)}]", "overwrite=true", "progress=false",
    )  # fmt: skip
    steps.run(
        "evaluate molecules",
        "evaluate", f"samples={layout.molecules}", f"reference={layout.reference}",
        f"train={EMBEDDED}",
        "k=[100]", "kl_size=1000", f"out={layout.metrics}",
    )  # fmt: skip


# ----------------------------------------------------------------------------------- report


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or does not read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _where(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _against(value: Any, split: str) -> str:
    """``medgen evaluate``'s reference / train setting in words (``moses``: that MOSES split)."""
    if value is None:
        return "none"
    return f"MOSES {split}" if str(value) == "moses" else Path(str(value)).name


def molecule_line(label: str, generated: Path, metrics_file: Path, root: Path) -> str:
    """``- label: N molecules (file): validity, unique@k, novelty, FCD`` from the metrics JSON
    that ``medgen evaluate`` wrote (``metrics``: ``valid``, ``unique@<k>``, ``Novelty``,
    ``FCD/<reference>``; null where a metric has no value)."""
    record = _read_json(metrics_file)
    if record is None:
        return f"- {label}: no metrics ({_where(metrics_file, root)} is missing)"
    m = record.get("metrics") or {}
    ks = sorted(int(k.partition("@")[2]) for k in m if k.startswith("unique@"))
    k = next((k for k in reversed(ks) if m.get(f"unique@{k}") is not None), ks[-1] if ks else None)
    unique = "uniqueness n/a" if k is None else f"unique@{k} {_number(m.get(f'unique@{k}'))}"
    fcd = next((key for key in m if key.startswith("FCD/")), "FCD")
    ref, train = _against(record.get("reference"), "test"), _against(record.get("train"), "train")
    return (
        f"- {label}: {record.get('n_samples', '?')} molecules ({_where(generated, root)}): "
        f"validity {_number(m.get('valid'))}, {unique}, novelty {_number(m.get('Novelty'))}, "
        f"{fcd} {_number(m.get(fcd), 2)} (reference {ref}, novelty vs {train})"
    )


def screen_line(summary_file: Path, screened: Path, root: Path) -> str:
    """How many molecules passed every screen rule, from ``medgen screen``'s summary JSON."""
    record = _read_json(summary_file)
    s = (record or {}).get("summary")
    if not isinstance(s, dict):
        return f"- screen: no summary ({_where(summary_file, root)} is missing)"
    rules = ", ".join(s.get("passed_filter") or {}) or "no rules"
    return (
        f"- screen ({rules}): {s.get('passed_all', '?')} of {s.get('valid', '?')} valid "
        f"molecules passed ({s.get('rows', '?')} rows) -> {_where(screened, root)}"
    )


def scan_line(label: str, cohort: Path, evaluation: Path | None, root: Path) -> str:
    """A cohort and, when ``medgen evaluate`` judged it (``evaluation``: its out folder), its
    headline figures from ``evaluation.json``."""
    where = f"{label}: {_where(cohort, root)}/ (NIfTI, manifest.csv, dataset.json)"
    record = None if evaluation is None else _read_json(evaluation / "evaluation.json")
    if record is None:
        return f"- {where}" if cohort.is_dir() else f"- {label}: not written"
    m = record.get("metrics") or {}
    sets = record.get("sets") or {}
    n = (sets.get("samples") or {}).get("n", "?")
    n_ref = (sets.get("reference") or {}).get("n", "?")
    line = (
        f"- {where}; {n} samples vs {n_ref} held-out phantoms: "
        f"FD {_number(m.get('fidelity/frechet'), 2)}, HU JS {_number(m.get('fidelity/hu_js'))}, "
        f"band TV {_number(m.get('fidelity/band_tv'))}, "
        f"MS-SSIM {_number(m.get('diversity/ms_ssim'))} "
        f"(reference {_number(m.get('diversity/ms_ssim_reference'))})"
    )
    flagged = m.get("memorization/flagged")  # a fraction of the samples; absent without train
    if isinstance(flagged, int | float) and isinstance(n, int):
        line += f", flagged as training copies {round(flagged * n)}/{n}"
    return line


def _last(folder: Path, pattern: str) -> list[Path]:
    found = sorted(folder.glob(pattern))
    return found[-1:]


def pictures(layout: Layout) -> list[Path]:
    """The PNGs worth opening that exist: scan previews, the cohort evaluation, molecule grids."""
    candidates = [
        layout.pretrained_scans / "preview.png",
        layout.pretrained_scan_evaluation / "evaluation.png",
        layout.scans / "preview.png",
        *_last(layout.scan_train / "previews", "epoch_*.png"),
        layout.scan_evaluation / "evaluation.png",
        layout.pretrained_molecules.with_name(layout.pretrained_molecules.name + ".png"),
        layout.molecules.with_name(layout.molecules.name + ".png"),
        *_last(layout.molecule_train / "molecules", "epoch_*.png"),
    ]
    return [p for p in candidates if p.is_file()]


def report(
    layout: Layout,
    *,
    skipped: Mapping[str, str] | None = None,
    times: Sequence[tuple[str, float]] = (),
) -> str:
    """The demo's report (Markdown, ~20 lines) from the files the steps wrote: molecule metrics
    (``medgen evaluate``), the screen summary, the cohort evaluation, the pictures. A missing
    file is a line saying so; ``skipped`` says which shipped models were not run and why."""
    root = layout.root
    lines = ["# medgen demo", "", f"Outputs under {root} (paths below are relative to it).", ""]
    lines += ["## Shipped models (ckpt=pretrained:<name>)"]
    skipped = dict(skipped or {})
    lines += [f"- {name}: {why}" for name, why in skipped.items()]
    if SCAN_MODEL not in skipped:
        lines.append(
            scan_line(SCAN_MODEL, layout.pretrained_scans, layout.pretrained_scan_evaluation, root)
        )
    if MOLECULE_MODEL not in skipped:
        lines.append(
            molecule_line(
                MOLECULE_MODEL, layout.pretrained_molecules, layout.pretrained_metrics, root
            )  # fmt: skip
        )
    lines += ["", "## Trained here for a few minutes (expect rough samples)"]
    lines.append(f"- runs (config, checkpoints, metrics): {_where(layout.scan_train, root)}/, "
                 f"{_where(layout.molecule_train, root)}/")  # fmt: skip
    lines.append(scan_line("scans", layout.scans, layout.scan_evaluation, root))
    lines.append(molecule_line("molecules", layout.molecules, layout.metrics, root))
    lines.append(screen_line(layout.screen_summary, layout.screened, root))
    found = pictures(layout)
    lines += ["", "## Pictures to open"]
    lines += [f"- {_where(p, root)}" for p in found] or ["- none were written"]
    if times:
        total = sum(s for _, s in times)
        lines += ["", f"## Wall times (total {total:.0f} s)"]
        lines.append(", ".join(f"{label} {s:.0f} s" for label, s in times))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- main


def main(root: str | os.PathLike | None = None) -> Path:
    """Run the demo into ``root`` (default ``outputs/demo/<time>``); returns the folder."""
    from medgen import pretrained

    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    layout = Layout(Path(root or Path("outputs") / "demo" / stamp).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    steps = Steps()
    registered = {e.name for e in pretrained.available()}
    write_reference(layout.reference)
    skipped = pretrained_steps(layout, steps, registered)
    loop_steps(layout, steps)
    text = report(layout, skipped=skipped, times=steps.times)
    layout.report.write_text(text, encoding="utf-8")
    print(f"\nmedgen demo finished in {time.perf_counter() - start:.0f} s\n\n{text}")
    print(f"(this report: {layout.report})")
    return layout.root


if __name__ == "__main__":
    from medgen.errors import UserError

    try:
        main(sys.argv[1] if len(sys.argv) > 1 else None)
    except UserError as err:  # e.g. a registry that does not read: one line, exit 2
        print(f"medgen demo: {err}", file=sys.stderr)
        sys.exit(2)
