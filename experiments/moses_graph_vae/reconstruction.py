"""Exact greedy reconstruction of held-out MOSES molecules, per checkpoint.

    python experiments/moses_graph_vae/reconstruction.py pretrained:moses <run>/last.ckpt

For each checkpoint: the share of the first ``--n`` (1,000) molecules of MOSES Test whose greedy
decode of the posterior mean is the same molecule (``MoleculeVAE.reconstruction_accuracy``,
canonical SMILES). ``--search K``: decode with ``MoleculeVAE.decode``'s likelihood search instead
(greedy plus ``K`` draws at ``--search-temperature``, the most likely decoding path kept).
``medgen data moses`` first.
"""

from __future__ import annotations

import argparse
import gzip


def main() -> None:
    from medgen.molecules.api import MoleculeVAE

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--test", default="data/moses/test.csv.gz")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--search", type=int, default=0)
    parser.add_argument("--search-temperature", type=float, default=0.5)
    args = parser.parse_args()
    with gzip.open(args.test, "rt") as f:
        next(f)
        test = [line.split(",")[0].strip() for _, line in zip(range(args.n), f, strict=False)]
    for ckpt in args.checkpoints:
        accuracy = MoleculeVAE.from_checkpoint(ckpt).reconstruction_accuracy(
            test, search=args.search, search_temperature=args.search_temperature
        )
        how = f"search {args.search} at {args.search_temperature}" if args.search else "greedy"
        print(f"{ckpt}: exact reconstruction ({how}) of {len(test)} MOSES test molecules "
              f"{accuracy:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
