"""Ring sizes of sampled molecules beside MOSES train.

    python experiments/moses_graph_vae/rings.py outputs/eval/<run>_s0.csv [more.csv ...]

For each file (``medgen sample`` output, or any SMILES file medgen reads) and for ``--n``
(30,000) random MOSES train molecules: the share of molecules holding a ring (RDKit SSSR) of
each size 3..8+, rings per molecule, and aromatic rings per molecule, as a Markdown table.
``medgen data moses`` first.
"""

from __future__ import annotations

import argparse
import gzip
import random

SIZES = (3, 4, 5, 6, 7, 8)


def ring_row(smiles: list[str]) -> list[float]:
    from rdkit import Chem

    has = dict.fromkeys(SIZES, 0)
    rings = aromatic = n = 0
    for smi in smiles:
        mol = Chem.MolFromSmiles(smi) if smi else None
        if mol is None:
            continue
        n += 1
        info = mol.GetRingInfo()
        sizes = {min(len(r), 8) for r in info.AtomRings()}
        for s in sizes:
            has[s] += 1
        rings += info.NumRings()
        aromatic += sum(
            all(mol.GetBondWithIdx(b).GetIsAromatic() for b in ring) for ring in info.BondRings()
        )
    n = max(n, 1)
    return [has[s] / n for s in SIZES] + [rings / n, aromatic / n]


def main() -> None:
    from medgen.chem.readers import read_molecules

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("samples", nargs="+")
    parser.add_argument("--train", default="data/moses/train.csv.gz")
    parser.add_argument("--n", type=int, default=30000)
    args = parser.parse_args()
    with gzip.open(args.train, "rt") as f:
        next(f)
        train = [line.split(",")[0].strip() for line in f]
    rows = {"MOSES train (random)": random.Random(0).sample(train, args.n)}
    for path in args.samples:
        rows[path] = [s for chunk in read_molecules(path) for s in chunk["smiles"]]
    head = " | ".join(f"ring {s}{'+' if s == 8 else ''}" for s in SIZES)
    print(f"| molecules | {head} | rings / molecule | aromatic rings / molecule |")
    print("|---|" + "---:|" * (len(SIZES) + 2))
    for name, smiles in rows.items():
        cells = ring_row(smiles)
        shares = " | ".join(f"{c:.1%}" for c in cells[: len(SIZES)])
        print(f"| {name} | {shares} | {cells[-2]:.2f} | {cells[-1]:.2f} |")


if __name__ == "__main__":
    main()
