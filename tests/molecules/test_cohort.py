"""The graph VAE as a generator: settings, the molecule cohort (resume, refusal, batch-size
invariance) through the sharded sampling driver, config nodes and old checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from medgen.errors import ConfigError, InputFileError, OutputExistsError
from medgen.generation import Generator, Output, load_generator, sample_to
from medgen.molecules.cohort import MoleculeCohort
from medgen.molecules.module import GraphVAEModule
from medgen.molecules.sampling import sample_smiles
from medgen.records import Sampler, SampleSettings

TINY = dict(
    vocabulary=["C", "N", "O"],
    max_atoms=12,
    network={"latent_dim": 8, "hidden_dim": 16, "pair_dim": 8},
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained tiny graph VAE in Lightning's checkpoint layout (plain values only)."""
    torch.manual_seed(0)
    module = GraphVAEModule(**TINY)
    path = tmp_path_factory.mktemp("vae") / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def draw(ckpt, out, *, n=10, batch_size=4, seed=1, **kw):
    generator, file = load_generator(ckpt)
    settings = SampleSettings(seed=seed, temperature=kw.pop("temperature", 1.0))
    return sample_to(
        generator, settings, out=out, checkpoint=file, n=n, batch_size=batch_size, **kw
    )


def test_the_module_is_a_generator_that_checks_its_settings(ckpt):
    generator, file = load_generator(ckpt)  # found through hyper_parameters["module"]
    assert isinstance(generator, GraphVAEModule) and isinstance(generator, Generator)
    assert generator.output == Output.MOLECULES and file == ckpt
    ok = generator.resolve_settings(SampleSettings(seed=2, temperature=2))
    assert ok.temperature == 2.0 and isinstance(ok.temperature, float)
    bad = [
        (dict(sampler=Sampler.DDIM), "sampler='ddim'"),
        (dict(steps=10), "steps=10"),
        (dict(eta=0.5), "eta=0.5"),
        (dict(condition=1), "condition=1"),
        (dict(guidance_scale=2.0), "guidance_scale=2.0"),
    ]
    for change, needle in bad:
        with pytest.raises(ConfigError, match=needle):
            generator.resolve_settings(SampleSettings(**change))
    with pytest.raises(ValueError, match="temperature must be .*got 0"):
        generator.resolve_settings(SampleSettings(temperature=0.0))
    # molecule i depends on (seed, i) only: the same as the scripting API's draws
    settings = SampleSettings(seed=4)
    batch = generator.generate([3, 7, 1], settings)
    assert batch.indices == [3, 7, 1]
    every = sample_smiles(generator.vae, generator.vocab, 8, seed=4)
    assert batch.items == [every[3], every[7], every[1]]


def test_out_must_be_a_csv_or_sdf_file_in_an_existing_folder(ckpt, tmp_path):
    settings = SampleSettings()
    for out in (tmp_path / "mols.smi", tmp_path / "folder", tmp_path):
        with pytest.raises(ConfigError, match="out="):
            MoleculeCohort(out, settings, ckpt)
    with pytest.raises(FileNotFoundError, match="missing"):
        MoleculeCohort(tmp_path / "missing" / "m.csv", settings, ckpt)


def test_batch_size_does_not_change_the_file(ckpt, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    first = draw(ckpt, a, n=17, batch_size=3)
    draw(ckpt, b, n=17, batch_size=7)
    # the synthetic mark heads the file (its record holds the creation time); the rows match
    marks = [r for r in a.read_text().splitlines() if r.startswith("# ")]
    assert marks and marks[0].startswith("# medgen-synthetic ")
    rows = [r for r in a.read_text().splitlines() if not r.startswith("# ")]
    assert rows == [r for r in b.read_text().splitlines() if not r.startswith("# ")]
    assert first["written_total"] == 17 and first["validity"] == 1.0
    assert rows[0] == "index,seed,smiles,valid,dualuse_alerts"
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(17)]
    side = json.loads((tmp_path / "a.csv.json").read_text())
    assert side["n"] == 17 and side["seed"] == 1 and side["provenance"]["medgen_version"]
    assert (tmp_path / "a.csv.png").read_bytes()[:4] == b"\x89PNG"  # preview=true by default


def test_a_killed_run_resumes_and_draws_only_the_missing(ckpt, tmp_path, monkeypatch):
    once = tmp_path / "once.csv"
    draw(ckpt, once, n=11, batch_size=3, preview=False)
    out = tmp_path / "resumed.csv"
    real_write, calls = MoleculeCohort.write, []

    def dying_write(self, batch, *, rank, world_size):
        if len(calls) == 2:
            raise RuntimeError("killed")
        calls.append(batch.indices)
        return real_write(self, batch, rank=rank, world_size=world_size)

    monkeypatch.setattr(MoleculeCohort, "write", dying_write)
    with pytest.raises(RuntimeError, match="killed"):
        draw(ckpt, out, n=11, batch_size=3, preview=False)
    monkeypatch.undo()
    parts = tmp_path / ".resumed.csv.parts"
    assert not out.exists() and calls == [[0, 1, 2], [3, 4, 5]]
    assert sorted(p.name for p in parts.glob("part-*")) == [
        "part-r0000-000000000.json", "part-r0000-000000003.json",
    ]  # fmt: skip
    # other settings may not mix with the parts, unless overwrite
    with pytest.raises(OutputExistsError, match=r"seed=2 \(was 1\)"):
        draw(ckpt, out, n=11, seed=2)
    summary = draw(ckpt, out, n=11, batch_size=4, preview=False)
    assert summary["written_total"] == 5  # 6..10 only
    assert out.read_text() == once.read_text() and not parts.exists()
    # a complete out draws nothing on a rerun, and stays as it is
    again = draw(ckpt, out, n=11, batch_size=4, preview=False)
    assert again["written_total"] == 0 and out.read_text() == once.read_text()


def test_other_settings_are_refused_unless_overwrite(ckpt, tmp_path):
    out = tmp_path / "m.sdf"
    draw(ckpt, out, n=6, preview=False)
    before = out.read_text()
    assert before.count("$$$$") == 6 and "sample_000005" in before
    for change, needle in ((dict(seed=9), "seed=9 \\(was 1\\)"), (dict(n=7), "n=7 \\(was 6\\)"),
                           (dict(temperature=0.5), "temperature=0.5 \\(was 1.0\\)")):  # fmt: skip
        with pytest.raises(OutputExistsError, match=needle):
            draw(ckpt, out, **{"n": 6, **change})
    assert out.read_text() == before  # refused before any work
    summary = draw(ckpt, out, n=7, seed=9, overwrite=True, preview=False)
    assert summary["written_total"] == 7 and out.read_text().count("$$$$") == 7
    assert json.loads((tmp_path / "m.sdf.json").read_text())["seed"] == 9
    # a file medgen did not write (no sidecar) is not replaced either
    mine = tmp_path / "mine.csv"
    mine.write_text("smiles\nCCO\n")
    with pytest.raises(OutputExistsError, match="mine.csv exists"):
        draw(ckpt, mine, n=2)


def test_network_and_optimizer_are_checked_config_nodes():
    with pytest.raises(ConfigError, match="model.network.latent_dim=0"):
        GraphVAEModule(network={"latent_dim": 0})
    with pytest.raises(ConfigError, match="model.network.depth"):
        GraphVAEModule(network={"depth": 3})
    with pytest.raises(ConfigError, match="model.network.max_atoms"):
        GraphVAEModule(network={"max_atoms": 3})
    with pytest.raises(ConfigError, match="model.network._target_"):
        GraphVAEModule(network={"_target_": "medgen.nowhere.Net"})
    with pytest.raises(ConfigError, match="model.optimizer.lr=0"):
        GraphVAEModule(optimizer={"lr": 0})
    with pytest.raises(ConfigError, match="model.free_bits=-1"):
        GraphVAEModule(free_bits=-1)
    module = GraphVAEModule(**TINY, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.1
    assert module.vae.latent_dim == 8 and module.hparams["network"]["encoder_layers"] == 3


def test_checkpoints_with_flat_hyperparameters_still_load(tmp_path):
    torch.manual_seed(0)
    # a first-wave checkpoint: flat hyperparameters, the version-1 (sequence) decoder's weights
    module = GraphVAEModule(**{**TINY, "network": {**TINY["network"], "decoder": "sequence"}})
    old = {"kind": "graph_vae", "vocabulary": ["C", "N", "O"], "max_atoms": 12, "latent_dim": 8,
           "hidden_dim": 16, "encoder_layers": 3, "pair_dim": 8, "lr": 0.002,
           "weight_decay": 0.0, "beta": 1.0, "kl_start_step": 0, "kl_warmup_steps": 5000,
           "free_bits": 0.0, "n_val_samples": 256, "grid_size": 24, "n_val_recon": 100,
           "sample_seed": 0}  # fmt: skip
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": old}, path)
    loaded = GraphVAEModule.from_checkpoint(path)
    assert loaded.hparams["optimizer"]["lr"] == 0.002
    settings = SampleSettings(seed=3)
    assert loaded.generate(range(4), settings).items == module.generate(range(4), settings).items
    torch.save({"state_dict": {}, "hyper_parameters": {"kind": "diffusion3d"}}, path)
    with pytest.raises(InputFileError, match="not a graph_vae"):
        GraphVAEModule.from_checkpoint(path)
