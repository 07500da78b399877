"""The conditioned-generation table of a graph VAE with property heads (default the shipped model).

    python experiments/moses_graph_vae/conditioned.py                      # pretrained:moses
    python experiments/moses_graph_vae/conditioned.py --ckpt run/heads.ckpt --n 1000 --seed 1

For each condition: ``n`` molecules drawn as ``medgen sample condition=...`` draws them (seed 0;
every returned molecule meets every target by RDKit), the guided success rate (candidates that
met the targets / candidates looked at; ``--seed``, default 0) beside the unguided (chance) rate
of plain prior draws,
and what was returned: validity, uniqueness, novelty against MOSES train (canonical SMILES as
stored, as MOSES computes it; ``medgen data moses`` first) and IntDiv. ``steer r`` is the heads'
correlation over prior draws between ``head(z)`` and the decoded molecules' RDKit values.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import torch

CONDITIONS = [
    {"qed": ">=0.8", "sa": "<=3"},
    {"qed": ">=0.9"},
    {"sa": "<=2.5"},
    {"logp": "2..3"},
    {"logp": ">=4"},
]


def main() -> None:
    from medgen.chem.metrics import fraction_unique, fraction_valid
    from medgen.molecules.api import MoleculeVAE

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="pretrained:moses")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--train", default="data/moses/train.csv.gz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    vae = MoleculeVAE.from_checkpoint(args.ckpt)
    train = None
    if Path(args.train).is_file():
        with gzip.open(args.train, "rt") as fh:
            next(fh)
            train = {line.split(",", 1)[0].strip() for line in fh}
    print(
        "| condition | n found / asked | candidates | guided success | chance | validity | "
        "uniqueness | novelty | IntDiv | steer r | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cond in CONDITIONS:
        start = time.perf_counter()
        frame = vae.sample_conditioned(args.n, cond, seed=args.seed)
        seconds = time.perf_counter() - start
        rep = frame.attrs
        smiles = frame["smiles"].tolist()
        novelty = "n/a"
        if train is not None and smiles:
            distinct = set(smiles)
            novelty = f"{len(distinct - train) / len(distinct):.3f}"
        steer = ", ".join(f"{k} {v:.2f}" for k, v in (rep.get("heads_steer_r") or {}).items()
                          if v is not None)  # fmt: skip
        text = ", ".join(f"{k} {v}" for k, v in cond.items())
        print(f"| {text} | {len(smiles)} / {args.n} | {rep['candidates']} | "
              f"{rep['guided']['success_rate']:.3f} | {rep['unguided']['success_rate']:.3f} | "
              f"{fraction_valid(smiles):.3f} | {fraction_unique(smiles):.3f} | {novelty} | "
              f"{rep['intdiv'] if rep['intdiv'] is None else round(rep['intdiv'], 3)} | "
              f"{steer or 'n/a'} | {seconds:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
