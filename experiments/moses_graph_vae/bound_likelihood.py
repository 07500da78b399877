"""Teacher-forced likelihood of held-out MOSES molecules with and without the ring bound.

    python experiments/moses_graph_vae/bound_likelihood.py pretrained:moses <run>/last.ckpt

For each checkpoint: the reconstruction NLL (nats per molecule, decoding the posterior mean with
each molecule's own properties) of the first ``--n`` (5,000) molecules of MOSES Test, scored
with the ring bound at teacher forcing (the distribution decoding draws from) and without it
(the distribution a model trained before the bound was scored under), and how many molecules
the bound changes. ``medgen data moses`` first.
"""

from __future__ import annotations

import argparse
import gzip

import torch


def nll(module, smiles: list[str], batch_size: int = 500) -> torch.Tensor:
    from medgen.molecules.graph import collate_graphs, encode_tokens, smiles_to_tokens

    vae, out = module.vae.eval(), []
    for lo in range(0, len(smiles), batch_size):
        chunk = smiles[lo : lo + batch_size]
        z = vae.decoder_latent(module.encode(chunk, with_condition=True))
        batch = collate_graphs([encode_tokens(*smiles_to_tokens(s), module.vocab) for s in chunk])
        with torch.no_grad():
            out.append(-sum(vae.decoder.log_likelihood(z, batch).values()))
    return torch.cat(out)


def main() -> None:
    from medgen.molecules.api import MoleculeVAE

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--test", default="data/moses/test.csv.gz")
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    with gzip.open(args.test, "rt") as f:
        next(f)
        test = [line.split(",")[0].strip() for _, line in zip(range(args.n), f, strict=False)]
    print("| checkpoint | ring bound | NLL with the bound | NLL without | molecules changed |")
    print("|---|---:|---:|---:|---:|")
    for ckpt in args.checkpoints:
        module = MoleculeVAE.from_checkpoint(ckpt)
        dec = module.vae.decoder
        bound = dec.ring_bound
        with_bound = nll(module, test)
        dec.ring_bound = 0
        without = nll(module, test)
        dec.ring_bound = bound
        changed = float(((with_bound - without).abs() > 1e-3).float().mean())
        print(f"| {ckpt} | {bound} | {with_bound.mean():.3f} | {without.mean():.3f} | "
              f"{changed:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
