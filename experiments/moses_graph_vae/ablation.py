"""Score the runs of a decoder ablation the same way (one row per run folder).

    python experiments/moses_graph_vae/ablation.py outputs/ablation/masks_true \
        outputs/ablation/masks_false

For each run's ``last.ckpt``: ``--n`` prior samples (seed 0, temperature 1); exact reconstruction
of the first ``--recon`` validation molecules of the run's own split (greedy decode of the
posterior mean); FCD of the valid samples against MOSES's test statistics (``medgen data moses``
first); the share passing the MOSES filters; novelty against the run's training molecules; the
share of samples with a ring of 8 or more atoms (SSSR); mean heavy atoms; and the training steps
the run made. Prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    import hydra
    from omegaconf import OmegaConf
    from rdkit import Chem

    from medgen.chem.alerts import moses_filters_pass
    from medgen.chem.fcd import activation_statistics, chemnet_activations, frechet_distance
    from medgen.chem.metrics import fraction_unique, fraction_valid
    from medgen.chem.reference import load_stats
    from medgen.molecules.api import MoleculeVAE

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--recon", type=int, default=200)
    parser.add_argument("--stats", default="data/moses/test_stats.plain.npz")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ref = load_stats(args.stats)
    print("| run | decoder | learned masks | steps | validity | uniqueness | novelty | "
          "recon_exact | filters | FCD/Test | rings >= 8 | heavy atoms |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        cfg = OmegaConf.load(run / "config.yaml")
        dm = hydra.utils.instantiate(cfg.data)
        dm.setup("fit")
        ckpt = run / "checkpoints" / "last.ckpt"
        steps = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
        vae = MoleculeVAE.from_checkpoint(ckpt)
        smiles = vae.sample(args.n, seed=0)
        valid = [s for s in smiles if s]
        mols = [Chem.MolFromSmiles(s) for s in valid]
        train = set(dm.train_smiles())
        distinct = set(valid)
        recon = vae.reconstruction_accuracy(dm.val_smiles()[: args.recon])
        act = chemnet_activations(valid)
        fcd = frechet_distance(*activation_statistics(act), ref.fcd_mu, ref.fcd_sigma)
        filters = sum(moses_filters_pass(m) for m in mols) / len(mols)
        big = sum(any(len(r) >= 8 for r in m.GetRingInfo().AtomRings()) for m in mols) / len(mols)
        heavy = sum(m.GetNumHeavyAtoms() for m in mols) / len(mols)
        hp = vae.module.hparams
        print(f"| {run.name} | {hp['network'].get('decoder', 'graph')} | "
              f"{bool(hp.get('masks'))} | {steps:,} | {fraction_valid(smiles):.3f} | "
              f"{fraction_unique(valid):.3f} | {len(distinct - train) / len(distinct):.3f} | "
              f"{recon:.3f} | {filters:.3f} | {fcd:.2f} | {big:.1%} | {heavy:.1f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
