"""Replay the validation FCD of checkpoints, with samples from N(0, I) and from a fitted prior.

    python experiments/moses_graph_vae/val_prior.py pretrained:moses <run>/checkpoints/*.ckpt

What ``callbacks.molecule_sampling`` logs as ``val/fcd`` with ``latent_prior=normal`` and with
``latent_prior=fitted`` (one full Gaussian over posterior draws of ``--n-prior`` training
molecules), for checkpoints of finished runs: FCD of ``--n`` samples (seed 0) to the first
``--n-ref`` molecules of MOSES Test (a fixed subset; the run's own validation split is not kept
in a checkpoint), plus the fit's held-out gain over N(0, I) (nats per molecule). It shows which
checkpoint each rule would keep. ``medgen data moses`` first.
"""

from __future__ import annotations

import argparse
import gzip


def _first(path: str, n: int) -> list[str]:
    with gzip.open(path, "rt") as f:
        next(f)
        return [line.split(",")[0].strip() for _, line in zip(range(n), f, strict=False)]


def main() -> None:
    from medgen.chem.fcd import activation_statistics, chemnet_activations, frechet_distance
    from medgen.molecules.api import MoleculeVAE

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--train", default="data/moses/train.csv.gz")
    parser.add_argument("--test", default="data/moses/test.csv.gz")
    parser.add_argument("--n", type=int, default=1000, help="samples per checkpoint and prior")
    parser.add_argument("--n-ref", type=int, default=2000, help="reference molecules")
    parser.add_argument("--n-prior", type=int, default=5000, help="molecules the prior fits")
    args = parser.parse_args()
    reference = activation_statistics(chemnet_activations(_first(args.test, args.n_ref)))
    train = _first(args.train, args.n_prior)

    def fcd(smiles: list[str | None]) -> float:
        valid = [s for s in smiles if s]
        return frechet_distance(*activation_statistics(chemnet_activations(valid)), *reference)

    print("| checkpoint | val/fcd, N(0, I) | val/fcd, fitted | prior gain (nats) |")
    print("|---|---:|---:|---:|")
    for ckpt in args.checkpoints:
        vae = MoleculeVAE.from_checkpoint(ckpt)
        normal = fcd(vae.sample(args.n, seed=0, latent_prior="normal"))
        report = vae.fit_prior(train, components=1, seed=0)
        fitted = fcd(vae.sample(args.n, seed=0, latent_prior="fitted"))
        gain = report["heldout_ll_z"] - report["normal_ll_z"]
        print(f"| {ckpt} | {normal:.2f} | {fitted:.2f} | {gain:+.1f} |", flush=True)


if __name__ == "__main__":
    main()
