"""Score a stereo graph VAE trained on QM9 with the stereo of its DFT geometries.

    python experiments/qm9_stereo/evaluate.py <run dir or ckpt> --n 10000 --out result.json

Besides validity, uniqueness and novelty (isomeric and flat), it measures whether the model
learned *which* stereo a molecule can have, not only that it has some:

* ``specified``: share of stereo candidates (RDKit's potential centres and double bonds) that
  carry a label, in samples and in training molecules (QM9's geometries specify every one);
* ``embeds``: share of molecules whose stereoisomer RDKit can embed in 3D (ETKDG, a fixed seed
  and attempt budget): an impossible relative configuration (a trans-fused small ring, a
  cyclopropane whose substituents point the wrong way) cannot be embedded. Measured on the
  samples with stereo, on the same graphs with their labels drawn uniformly at random (what a
  stereo-blind generator would give), and on training molecules with stereo.
* ``known_graph_stereo_seen``: of the samples whose graph (flat SMILES) is a training molecule's,
  the share whose stereoisomer is one of that graph's training stereoisomers; the same for the
  random labels (QM9's geometries give each graph the configuration its relaxed structure has);
* ``recon_exact``: greedy reconstruction of held-out molecules, isomeric and flat.

``--n-embed 0`` skips the embedding (minutes: a failing embedding runs to its budget).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def stereo_counts(smiles: str) -> tuple[int, int]:
    """(candidates, specified) of a molecule."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    found = Chem.FindPotentialStereo(mol, cleanIt=False, flagPossible=True)
    kinds = (Chem.StereoType.Atom_Tetrahedral, Chem.StereoType.Bond_Double)
    cands = [s for s in found if s.type in kinds]
    return len(cands), sum(s.specified == Chem.StereoSpecified.Specified for s in cands)


def embeds(smiles: str, seed: int = 0) -> bool:
    """Whether RDKit finds a 3D conformer of this stereoisomer (ETKDG, 3 attempts)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.maxIterations = 200
    params.enforceChirality = True
    return any(AllChem.EmbedMolecule(mol, params) == 0 for _ in range(3))


def random_relabel(smiles: str, rng: random.Random) -> str:
    """The same graph with each specified centre / double bond given a random label."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    tags = (Chem.ChiralType.CHI_TETRAHEDRAL_CW, Chem.ChiralType.CHI_TETRAHEDRAL_CCW)
    for atom in mol.GetAtoms():
        if atom.GetChiralTag() in tags:
            atom.SetChiralTag(rng.choice(tags))
    for bond in mol.GetBonds():
        stereo = bond.GetStereo()
        if stereo != Chem.BondStereo.STEREONONE and len(bond.GetStereoAtoms()) == 2:
            atoms = list(bond.GetStereoAtoms())
            bond.SetStereo(rng.choice([Chem.BondStereo.STEREOCIS, Chem.BondStereo.STEREOTRANS]))
            bond.SetStereoAtoms(*atoms)
    return Chem.MolToSmiles(mol)


def has_stereo(smiles: str) -> bool:
    return any(c in smiles for c in "@/\\")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-embed", type=int, default=1000)
    parser.add_argument("--n-recon", type=int, default=1000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from rdkit import RDLogger

    from medgen.chem.metrics import fraction_unique, fraction_valid, novelty
    from medgen.molecules.api import MoleculeVAE
    from medgen.molecules.graph import round_trip

    RDLogger.DisableLog("rdApp.*")
    t0 = time.time()
    vae = MoleculeVAE.from_checkpoint(args.ckpt)
    run = Path(args.ckpt)
    run = run if run.is_dir() else run.parent.parent
    import hydra
    import numpy as np
    from omegaconf import OmegaConf

    # the run's own splits: its data node, from the featurization cache
    dm = hydra.utils.instantiate(OmegaConf.load(run / "config.yaml").data)
    dm.setup()
    train, val = dm.train_smiles(), dm.val_smiles()
    drawn = vae.sample(args.n, seed=args.seed)
    t_sample = time.time() - t0
    valid = [s for s in drawn if s]
    train_set = set(train)
    rng = random.Random(args.seed)
    with_stereo = [s for s in dict.fromkeys(valid) if has_stereo(s)]
    picked = rng.sample(with_stereo, min(args.n_embed, len(with_stereo)))
    train_stereo = [s for s in train if has_stereo(s)]
    train_pick = rng.sample(train_stereo, min(args.n_embed, len(train_stereo)))
    counts = [stereo_counts(s) for s in valid[:5000]]
    train_counts = [stereo_counts(s) for s in rng.sample(train, min(len(train), 5000))]
    isomers_of: dict[str, set[str]] = {}
    for s in train:
        isomers_of.setdefault(round_trip(s), set()).add(s)
    known = [s for s in dict.fromkeys(valid) if has_stereo(s) and round_trip(s) in isomers_of]
    relabel_rng = random.Random(args.seed + 1)
    seen = [s in isomers_of[round_trip(s)] for s in known]
    seen_random = [random_relabel(s, relabel_rng) in isomers_of[round_trip(s)] for s in known]

    def share(rows):
        cands = sum(c for c, _ in rows)
        return sum(s for _, s in rows) / max(1, cands)

    result = {
        "ckpt": str(args.ckpt),
        "n": args.n,
        "seed": args.seed,
        "validity": fraction_valid(drawn),
        "uniqueness": fraction_unique(drawn),
        "novelty_isomeric": novelty(drawn, train_set),
        "novelty_flat": novelty([round_trip(s) for s in valid], set(isomers_of)),
        "with_stereo_samples": sum(has_stereo(s) for s in valid) / max(1, len(valid)),
        "with_stereo_train": len(train_stereo) / max(1, len(train)),
        "specified_samples": share(counts),
        "specified_train": share(train_counts),
        "known_graphs_with_stereo": len(known),
        "known_graph_stereo_seen": float(np.mean(seen)) if known else None,
        "known_graph_stereo_seen_random_labels": float(np.mean(seen_random)) if known else None,
        "n_embed": len(picked),
        "sample_seconds": t_sample,
    }
    if picked:
        result["embeds_samples"] = float(np.mean([embeds(s) for s in picked]))
        relabelled = [random_relabel(s, rng) for s in picked]
        result["embeds_random_labels"] = float(np.mean([embeds(s) for s in relabelled]))
        result["embeds_train"] = float(np.mean([embeds(s) for s in train_pick]))
    if val:
        val = val[: args.n_recon]
        result["recon_exact_isomeric"] = vae.reconstruction_accuracy(val)
        decoded = vae.decode(vae.encode(val))
        result["recon_exact_flat"] = float(
            np.mean(
                [
                    d is not None and round_trip(d) == round_trip(v)
                    for d, v in zip(decoded, val, strict=True)
                ]
            )  # fmt: skip
        )
    result["hparams_stereo"] = vae.module.hparams.get("stereo")
    result["wall_seconds"] = time.time() - t0
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
