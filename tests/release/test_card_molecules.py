"""The molecule card lists the cohort's figures; novel_only writes the first n novel molecules of
the index stream; the training set is found from the run dir (record or config) or a file."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medgen.errors import ConfigError
from medgen.molecules.release import (
    TRAIN_SET_FILE,
    TrainingSet,
    find_training_set,
    molecule_release,
    require_training_set,
    select,
)
from medgen.records import SampleSettings
from tests.release.test_marking_molecules import (
    POOL,
    TRAIN,
    MoleculeStandIn,
    checkpoint,  # noqa: F401 - the fixture
    draw,
    stream,
)

MUSTARD = "ClCCSCCCl"


def test_the_card_lists_the_figures(tmp_path, checkpoint):  # noqa: F811
    out = tmp_path / "mols.csv"
    summary = draw(out, checkpoint, n=40)
    drawn = stream(40)
    copies = sum(s in TRAIN for s in drawn)
    assert 0 < copies < 40  # the stand-in's stream holds training copies
    assert summary["memorization"]["training_copies"] == copies
    unique = {s for s in drawn if s}
    assert summary["memorization"]["novelty"] == pytest.approx(
        len(unique - set(TRAIN)) / len(unique)
    )
    assert summary["dualuse"]["flagged"] == drawn.count(MUSTARD) > 0
    md = Path(summary["card"])
    assert md.name == "mols.CARD.md" and md.with_name("mols.card.json").is_file()
    card = json.loads(md.with_name("mols.card.json").read_text())
    sections = card["sections"]
    assert sections["Model"]["checkpoint_sha256"] == summary["checkpoint_sha256"]
    assert sections["Training data"]["source"] == "toy.smi"
    assert sections["Training data"]["molecules"] == len(TRAIN)
    figures = sections["Evaluation"]
    assert figures["validity"] == summary["validity"] and figures["n"] == 40
    assert figures["uniqueness"] == summary["uniqueness"]
    assert figures["novelty"] == summary["memorization"]["novelty"]
    assert figures["training_copies"] == copies
    assert sections["Dual-use screen"]["flagged"] == drawn.count(MUSTARD)
    assert sections["Dual-use screen"]["class: sulfur mustard (2-haloethyl sulfide)"] > 0
    bias = sections["Size and drug-likeness vs training (bias check)"]
    heavy = np.mean([_heavy(s) for s in drawn if s])
    assert bias["heavy_atoms mean (samples / training)"].startswith(f"{heavy:.4g} / ")
    assert bias["qed Wasserstein-1"] >= 0.0
    assert card["sections"]["Intended use"] and card["sections"]["Limits"]
    text = md.read_text()  # the Markdown shows the same figures
    for needle in (
        "## Evaluation",
        f"| training_copies | {copies} |",
        "## Dual-use screen",
        f"| flagged | {drawn.count(MUSTARD)} |",
        "## Intended use",
        "## Limits",
    ):
        assert needle in text, needle  # fmt: skip
    assert f"| validity | {summary['validity']:.4g} |" in text


def _heavy(smiles: str) -> int:
    from rdkit import Chem

    return Chem.MolFromSmiles(smiles).GetNumHeavyAtoms()


def test_novel_only_writes_the_first_n_novel_molecules_of_the_stream(tmp_path, checkpoint):  # noqa: F811
    out = tmp_path / "novel.csv"
    summary = draw(out, checkpoint, n=20, **_novel())
    long = stream(200)
    novel = [i for i, s in enumerate(long) if s not in TRAIN][:20]
    rows = [line.split(",") for line in out.read_text().splitlines()[3:]]
    assert [int(r[0]) for r in rows] == novel  # rows keep their stream index
    assert [r[2] or None for r in rows] == [long[i] for i in novel]
    assert not set(r[2] for r in rows) & set(TRAIN)
    memo = summary["memorization"]
    assert memo["dropped_training_copies"] == sum(s in TRAIN for s in long[: novel[-1] + 1])
    assert memo["training_copies"] == 0 and memo["novelty"] == 1.0
    # another batch size, the same file (the extra draws depend on (seed, i) only)
    again = tmp_path / "again.csv"
    draw(again, checkpoint, n=20, **_novel())
    strip = lambda p: [ln for ln in p.read_text().splitlines() if not ln.startswith("# ")]  # noqa: E731
    assert strip(again) == strip(out)


def _novel() -> dict:
    return {"molecules": {"novel_only": True, "dualuse": True, "train_smiles": None}}


def test_novel_only_without_a_training_set_names_the_key(tmp_path):
    ckpt = tmp_path / "lonely.ckpt"
    ckpt.write_bytes(b"weights")
    with pytest.raises(ConfigError, match="novel_only=True"):
        require_training_set(ckpt, None)
    generator, settings = MoleculeStandIn(), SampleSettings()
    with pytest.raises(ConfigError, match="novel_only"):
        molecule_release(
            settings, generator, ckpt, novel_only=True, dualuse=True, train_smiles=None
        )
    with pytest.raises(FileNotFoundError, match="train_smiles="):
        molecule_release(settings, generator, ckpt, novel_only=True, dualuse=True,
                         train_smiles=str(tmp_path / "missing.smi"))  # fmt: skip
    scan = SimpleNamespace(output="volumes")
    with pytest.raises(ConfigError, match="novel_only=True is not allowed: False for a scan"):
        molecule_release(settings, scan, ckpt, novel_only=True, dualuse=True, train_smiles=None)
    # a training SMILES file works where the run dir has nothing
    source = tmp_path / "train.smi"
    source.write_text("OCC\nc1ccccc1O\n")
    found = find_training_set(ckpt, str(source))
    assert found is not None and found.contains(["CCO", "Oc1ccccc1", "CCN", None]).tolist() == [
        True, True, False, False]  # fmt: skip
    assert found.description["source"] == "train.smi" and "/" not in json.dumps(found.description)


def test_select_known_answer():
    train = TrainingSet.from_smiles(["A", "B"])
    found = {0: "A", 1: "C", 2: "B", 3: "D"}
    calls = []

    def more(indices):
        calls.append(indices)
        return {i: ("A" if i % 2 else f"X{i}") for i in indices}

    chosen = select(found, 4, train=train, novel_only=True, draw=more, batch_size=3)
    assert chosen.indices == [1, 3, 4, 6] and chosen.smiles == ["C", "D", "X4", "X6"]
    assert chosen.copies == 3 and chosen.drawn == 7 and calls[0][0] == 4
    plain = select(found, 4, train=train, novel_only=False)
    assert plain.indices == [0, 1, 2, 3] and plain.copies == 2


def test_training_record_from_the_callback_matches_the_config_rebuild(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from medgen.molecules.callbacks import MoleculeSampling
    from medgen.molecules.data import GraphDataModule

    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "train.smi"
    source.write_text("\n".join(s for s in POOL if s and s != MUSTARD) + "\n")
    node = {"_target_": "medgen.molecules.data.GraphDataModule", "path": str(source),
            "val_fraction": 0.2, "test_fraction": 0.0, "seed": 3}  # fmt: skip
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"kind": "graph_vae"}}, ckpt)
    OmegaConf.save(OmegaConf.create({"data": node}), run / "config.yaml")
    rebuilt = find_training_set(ckpt)  # from config.yaml: the split again
    dm = GraphDataModule(**{k: v for k, v in node.items() if k != "_target_"})
    dm.setup("fit")
    trainer = SimpleNamespace(is_global_zero=True, datamodule=dm, default_root_dir=str(run))
    MoleculeSampling().on_fit_start(trainer, None)
    recorded = find_training_set(ckpt)  # now from train_set.npz
    assert (run / TRAIN_SET_FILE).is_file() and recorded is not None and rebuilt is not None
    assert np.array_equal(recorded.keys, rebuilt.keys) and recorded.size == len(dm.train_smiles())
    assert recorded.contains(dm.train_smiles()).all()
    assert not recorded.contains([dm.source.smiles[k] for k in dm.val_indices]).any()
    assert recorded.description["source"] == "train.smi"
    assert recorded.description["split"]["seed"] == 3
    assert str(tmp_path) not in json.dumps(recorded.description)
