"""Which latent prior to sample a graph VAE from: N(0, I) against Gaussian mixtures fitted to its
aggregate posterior (``medgen.molecules.prior``), at a few component counts, with and without
the condition columns, scored by FCD to MOSES Test and the MOSES filters.

    python experiments/moses_graph_vae/prior_sweep.py                   # pretrained:moses
    python experiments/moses_graph_vae/prior_sweep.py --ckpt <run> --n-fit 40000 --n 5000

The mixtures are fitted on posterior draws of ``--n-fit`` random MOSES training molecules
(``--seed``; 10% held out for the log-likelihood column); every row decodes the same ``--n``
molecule indices of sampling seed ``--sample-seed`` (the same decoder noise and condition rows),
so only the latents differ. FCD here is of ``--n`` samples (5,000 by default): biased upward
against the 30,000-sample FCD of the MOSES table, fine for ranking rows. ``medgen data moses``
first.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from medgen.chem.alerts import moses_filters_pass
    from medgen.chem.fcd import fcd_statistics, frechet_distance
    from medgen.chem.mol import parse_smiles
    from medgen.molecules.api import MoleculeVAE
    from medgen.molecules.prior import encode_for_prior, fit_prior
    from medgen.molecules.sampling import draw_noise, latent_prior_choice

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="pretrained:moses")
    parser.add_argument("--train", default="data/moses/train.csv.gz")
    parser.add_argument("--stats", default="data/moses/test_stats.plain.npz")
    parser.add_argument("--n-fit", type=int, default=40_000)
    parser.add_argument("--n", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-seed", type=int, default=1)
    parser.add_argument("--components", default="1,8,32")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()

    model = MoleculeVAE.from_checkpoint(args.ckpt)
    model.vae.latent_prior = None  # fit from scratch; the checkpoint's own prior is not used
    with gzip.open(args.train, "rt") as f:
        next(f)
        train = [line.split(",")[0].strip() for line in f if line.strip()]
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(train), size=args.n_fit, replace=False)
    start = time.perf_counter()
    z, cond, skipped = encode_for_prior(model, [train[int(k)] for k in picks], seed=args.seed)
    print(f"encoded {len(z)} training molecules ({skipped} skipped) in "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    ref = np.load(args.stats, allow_pickle=False)

    def score(name: str, temperature: float = 1.0, **fit) -> dict:
        row: dict = {"prior": name, "temperature": temperature}
        if fit:
            t = time.perf_counter()
            model.vae.latent_prior, report = fit_prior(z, **fit, seed=args.seed)
            row.update(heldout_ll_z=report["heldout_ll_z"], normal_ll_z=report["normal_ll_z"],
                       fit_s=round(time.perf_counter() - t, 1))  # fmt: skip
        choice = "fitted" if fit else "normal"
        smiles: list[str | None] = []
        with latent_prior_choice(model.vae, choice):
            for lo in range(0, args.n, 1000):
                idx = range(lo, min(args.n, lo + 1000))
                zz, u = draw_noise(model.vae, idx, args.sample_seed)
                smiles += model.vae.decode_smiles(zz, model.vocab, temperature=temperature,
                                                  uniforms=u)  # fmt: skip
        valid = [s for s in smiles if s]
        mu, sigma = fcd_statistics(valid)
        row.update(
            valid=len(valid) / args.n,
            unique=len(set(valid)) / max(1, len(valid)),
            filters=float(np.mean([moses_filters_pass(parse_smiles(s)) for s in valid])),
            fcd=frechet_distance(mu, sigma, ref["fcd_mu"], ref["fcd_sigma"]),
        )
        print(json.dumps(row), flush=True)
        return row

    rows = [score("N(0, I)")]
    for k in [int(c) for c in args.components.split(",")]:
        rows.append(score(f"mixture K={k}, [z, c]", components=k, cond=cond))
        if k == 8 and cond is not None:
            rows.append(score("mixture K=8, z only", components=8, cond=None))
    rows.append(score("N(0, I)", temperature=0.8))
    rows.append(score("mixture K=8, [z, c]", temperature=0.8, components=8, cond=cond))
    print(f"\n| prior | T | held-out log p(z) | valid | unique | filters | FCD/Test ({args.n}) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ll = r.get("heldout_ll_z")
        ll_text = f"{ll:.2f}" if ll is not None else f"{rows[1]['normal_ll_z']:.2f}"
        print(f"| {r['prior']} | {r['temperature']} | {ll_text} | {r['valid']:.3f} | "
              f"{r['unique']:.3f} | {r['filters']:.3f} | {r['fcd']:.2f} |")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
