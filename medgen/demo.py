"""``make demo`` / ``python -m medgen.demo``: the quickstart, end to end, on embedded data.

1. train the 3D diffusion model on procedural CT phantoms (32^3, a few minutes on CPU),
2. sample synthetic volumes from it to NIfTI with sidecars, manifest and preview,
3. train the molecule graph VAE on the embedded MOSES sample (debug size),
4. sample molecules, score them (``medgen screen``) and evaluate them (``medgen evaluate``).

Each step is the real ``medgen`` command; the script prints where every output went.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path


def _medgen(*args: str) -> None:
    cmd = [sys.executable, "-m", "medgen", *args]
    print(f"\n$ medgen {' '.join(args)}", flush=True)
    start = time.time()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        sys.exit(f"demo step failed (exit {result.returncode}): medgen {' '.join(args)}")
    print(f"  ({time.time() - start:.0f} s)", flush=True)


def main(root: str | None = None) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    demo = Path(root or Path("outputs") / "demo" / stamp).resolve()
    resources = Path(__file__).resolve().parent / "molecules" / "resources" / "moses_sample.smi"

    # about 160 optimizer steps: enough for the torso outline and the dark lungs to appear
    _medgen(
        "train",
        "experiment=phantom32_ddpm",
        "data.num_train=128",
        "trainer.max_epochs=5",
        "callbacks.scan_preview.every_n_epochs=5",
        f"hydra.run.dir={demo}/scan_train",
    )
    _medgen(
        "sample",
        f"ckpt={demo}/scan_train",
        "n=4",
        "sampler=ddim",
        "steps=25",
        "seed=0",
        f"out={demo}/synthetic_scans",
        f"hydra.run.dir={demo}/scan_sample",
    )
    _medgen(
        "train",
        "experiment=smiles_graph_vae_quick",
        "debug=fast",
        "data.limit=2000",
        "trainer.limit_train_batches=20",
        f"hydra.run.dir={demo}/molecule_train",
    )
    (demo / "molecules").mkdir(
        parents=True, exist_ok=True
    )  # `out` files go into a folder that exists
    _medgen(
        "sample",
        f"ckpt={demo}/molecule_train",
        "n=500",
        "seed=0",
        f"out={demo}/molecules/generated.csv",
        f"hydra.run.dir={demo}/molecule_sample",
    )
    _medgen(
        "screen",
        f"input={demo}/molecules/generated.csv",
        f"out={demo}/molecules/screened.csv",
        "rules=[lipinski,veber,pains]",
        f"hydra.run.dir={demo}/molecule_screen",
    )
    _medgen(
        "evaluate",
        f"samples={demo}/molecules/generated.csv",
        f"reference={resources}",
        f"train={resources}",
        "kl_size=1000",
        f"out={demo}/molecules/metrics.json",
        f"hydra.run.dir={demo}/molecule_evaluate",
    )

    print("\nmedgen demo finished. Outputs:")
    rows = [
        ("3D diffusion run (config, checkpoints, metrics, previews)", demo / "scan_train"),
        ("synthetic scans (NIfTI, sidecars, manifest.csv, dataset.json)", demo / "synthetic_scans"),
        ("scan preview", demo / "synthetic_scans" / "preview.png"),
        ("graph VAE run (config, checkpoints, metrics, molecule grids)", demo / "molecule_train"),
        ("generated molecules", demo / "molecules" / "generated.csv"),
        ("screened molecules (properties, rules, alerts)", demo / "molecules" / "screened.csv"),
        ("MOSES-style metrics vs the embedded sample", demo / "molecules" / "metrics.json"),
    ]
    for text, path in rows:
        print(f"  {text}:\n    {path}")
    return demo


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
