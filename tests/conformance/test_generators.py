"""Every registered generator passes the same contract (docs/extending.md).

For each entry of :data:`GENERATORS`: compose its real configs at a tiny size, fit a few steps with
``medgen train``'s own function, reload the checkpoint with ``weights_only=True`` through the
generic loader, draw with a fixed seed twice (identical) and in two batchings (identical), write and
finalize a cohort through the sharded sampling driver, then resume it after a simulated kill and get
the same files. A new generator is covered by adding its entry here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from medgen.generation import Generator, Output, load_generator, sample_to
from medgen.records import SampleSettings
from medgen.tasks.train import train

SHRINK = ["debug=fast", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=csv"]
TINY_UNET = [
    "model.network.channels=[8,8]",
    "model.network.attention_levels=[false,false]",
    "model.network.num_head_channels=8",
    "model.network.norm_num_groups=8",
    "model.scheduler.num_train_timesteps=10",
    "data.size=16",
    "data.num_train=4",
    "data.num_val=2",
    "data.batch_size=2",
]
TINY_VAE = [
    "model.network.latent_dim=8",
    "model.network.hidden_dim=16",
    "model.network.pair_dim=8",
    "data.limit=64",
    "data.batch_size=16",
]

# name -> (train overrides, sampling settings for the draw)
GENERATORS: dict[str, tuple[list[str], SampleSettings]] = {
    "ddpm3d": (["model=ddpm3d", "data=phantom", *TINY_UNET], SampleSettings(seed=3, steps=3)),
    "rflow3d": (["model=rflow3d", "data=phantom", *TINY_UNET], SampleSettings(seed=3, steps=3)),
    "graph_vae": (["model=graph_vae", "data=smiles", *TINY_VAE], SampleSettings(seed=3)),
    "ldm3d": (["model=ldm3d", "data=phantom", *TINY_UNET], SampleSettings(seed=3, steps=3)),
}
# generators trained on another model's checkpoint: name -> (stage-1 overrides, the key for it)
STAGE1: dict[str, tuple[list[str], str]] = {
    "ldm3d": (
        ["model=autoencoder3d", "data=phantom", *[o for o in TINY_UNET if o.startswith("data.")]]
        + ["model.network.channels=[8,8]", "model.network.attention_levels=[false,false]"],
        "model.autoencoder",
    ),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny fitted checkpoint per generator, shared by the tests of this module."""
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import compose_at

    runs: dict[str, Path] = {}

    def fit(name: str) -> Path:
        if name not in runs:
            root = tmp_path_factory.mktemp(name)
            extra = []
            if name in STAGE1:
                first = tmp_path_factory.mktemp(f"{name}_stage1")
                cfg = compose_at(first, "train", [*SHRINK, *STAGE1[name][0]], job=True)
                torch.manual_seed(0)
                train(cfg)
                GlobalHydra.instance().clear()
                extra = [f"{STAGE1[name][1]}={first / 'run'}"]
            cfg = compose_at(root, "train", [*SHRINK, *GENERATORS[name][0], *extra], job=True)
            torch.manual_seed(0)
            train(cfg)
            GlobalHydra.instance().clear()
            runs[name] = root / "run"
        return runs[name]

    return fit


def _digest(out: Path) -> dict[str, str]:
    """sha256 of each sample file a cohort wrote (volumes: images/*; molecules: the file's rows)."""
    if out.is_dir():
        files = sorted((out / "images").glob("*.nii.gz"))
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    lines = out.read_text().splitlines()
    return {"rows": hashlib.sha256("\n".join(lines).encode()).hexdigest(), "n": str(len(lines))}


def _same_items(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    return list(a) == list(b)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_contract(name, trained, tmp_path):
    run = trained(name)
    generator, ckpt = load_generator(run)  # a run dir resolves to checkpoints/last.ckpt
    assert isinstance(generator, Generator)
    assert ckpt == run / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, weights_only=True)  # plain values only
    assert (
        raw["hyper_parameters"]["module"]
        == f"{type(generator).__module__}.{type(generator).__name__}"
    )

    settings = generator.resolve_settings(GENERATORS[name][1])
    first = generator.generate([0, 1, 2, 3], settings)
    again = generator.generate([0, 1, 2, 3], settings)
    assert first.indices == [0, 1, 2, 3] and _same_items(first.items, again.items)
    # sample i depends on (settings, i) only: alone, in another batch, in another order
    alone = generator.generate([2], settings)
    assert _same_items(alone.items, first.items[2:3])
    other_seed = generator.generate([0, 1, 2, 3], settings.replace(seed=settings.seed + 1))
    if generator.output == Output.VOLUMES:
        assert first.items.shape[0] == 4 and first.items.ndim == 5
        assert float(first.items.abs().max()) <= 1.0
        assert not torch.allclose(first.items, other_seed.items)
    else:
        assert len(first.items) == 4

    out = tmp_path / ("cohort" if generator.output == Output.VOLUMES else "mols.csv")
    common = dict(out=out, checkpoint=ckpt, n=5, preview=False)
    summary = sample_to(generator, settings, batch_size=2, **common)
    assert summary["written_total"] == 5
    once = _digest(out)

    # a simulated kill: take the last sample away, rerun, only it is drawn, same result
    if out.is_dir():
        victim = sorted((out / "images").glob("*.nii.gz"))[-1]
        victim.unlink()
    else:
        out.unlink()
    resumed = sample_to(generator, settings, batch_size=3, **common)
    assert resumed["written_total"] == (1 if generator.output == Output.VOLUMES else 5)
    assert _digest(out) == once
