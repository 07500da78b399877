"""Every way a file can fail to be a medgen checkpoint is a one-line InputFileError naming the file
and the case; a folder of several runs is listed, never guessed."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from medgen.errors import InputFileError, MissingFileError, UserError
from medgen.utils.checkpoint import (
    load_checkpoint,
    load_medgen_checkpoint,
    resolve_checkpoint,
)
from tests.sampling.helpers import TINY as TINY_UNET

TINY_VAE = dict(
    vocabulary=["C", "N", "O"], max_atoms=6, network=dict(latent_dim=4, hidden_dim=8, pair_dim=4)
)


def _medgen_ckpt(path, kind="graph_vae"):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"kind": kind}}, path)
    return path


def _raises(path, case: str, loader=load_medgen_checkpoint) -> InputFileError:
    with pytest.raises(InputFileError) as info:
        loader(path)
    message = str(info.value)
    assert str(path) in message and case in message, message
    assert isinstance(info.value, UserError)
    return info.value


def test_good_checkpoint_and_run_dir(tmp_path):
    last = _medgen_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")
    _medgen_ckpt(tmp_path / "run" / "checkpoints" / "epoch=3.ckpt")
    file, ckpt, kind = load_medgen_checkpoint(tmp_path / "run")
    assert (
        file == last and kind == "graph_vae" and torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
    )
    assert load_checkpoint(last)["hyper_parameters"]["kind"] == "graph_vae"  # signature kept


def test_truncated_checkpoint(tmp_path):
    good = _medgen_ckpt(tmp_path / "good.ckpt")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _raises(cut, "truncated or corrupt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    _raises(tmp_path / "empty.ckpt", "truncated or corrupt")


def test_random_bytes_and_text_are_not_checkpoints(tmp_path):
    (tmp_path / "noise.ckpt").write_bytes(os.urandom(1024))
    _raises(tmp_path / "noise.ckpt", "not a PyTorch checkpoint")
    (tmp_path / "notes.ckpt").write_text("epoch 3, val/loss 0.12\n")
    _raises(tmp_path / "notes.ckpt", "not a PyTorch checkpoint", loader=load_checkpoint)


def test_checkpoint_that_needs_pickled_code_is_refused(tmp_path):
    # any class outside the weights-only allow-list stands for pickled code
    path = tmp_path / "unsafe.ckpt"
    torch.save({"hyper_parameters": {"kind": "graph_vae"}, "obj": argparse.Namespace(a=1)}, path)
    err = _raises(path, "refuses to load: needs pickled code")
    assert "argparse.Namespace" in str(err)
    _raises(path, "refuses to load: needs pickled code", loader=load_checkpoint)


@pytest.mark.parametrize(
    "content",
    [{"a": torch.zeros(1)}, {"state_dict": {}, "hyper_parameters": {}}, torch.zeros(3)],
    ids=["plain-dict", "no-kind", "bare-tensor"],
)
def test_foreign_checkpoint_is_not_a_medgen_checkpoint(tmp_path, content):
    path = tmp_path / "foreign.ckpt"
    torch.save(content, path)
    _raises(path, "not a medgen checkpoint (no hyper_parameters.kind")


def test_folder_of_several_runs_lists_them(tmp_path):
    for i in range(12):
        _medgen_ckpt(tmp_path / "runs" / f"run{i:02d}" / "checkpoints" / "last.ckpt")
    with pytest.raises(InputFileError) as info:
        resolve_checkpoint(tmp_path / "runs")
    message = str(info.value)
    assert "holds 12 runs" in message and str(tmp_path / "runs") in message
    assert str(tmp_path / "runs" / "run00" / "checkpoints" / "last.ckpt") in message
    assert "run10" not in message and "... and 2 more" in message


def test_folder_of_several_checkpoints_without_last_lists_them(tmp_path):
    _medgen_ckpt(tmp_path / "run" / "a" / "epoch=1.ckpt")
    _medgen_ckpt(tmp_path / "run" / "b" / "epoch=2.ckpt")
    with pytest.raises(InputFileError, match="holds 2 checkpoints") as info:
        load_medgen_checkpoint(tmp_path / "run")
    assert "epoch=1.ckpt" in str(info.value) and "epoch=2.ckpt" in str(info.value)


def test_folder_with_exactly_one_checkpoint_resolves_to_it(tmp_path):
    only = _medgen_ckpt(tmp_path / "parent" / "run" / "checkpoints" / "epoch=1.ckpt")
    assert resolve_checkpoint(tmp_path / "parent") == only
    one_run = _medgen_ckpt(tmp_path / "other" / "run" / "checkpoints" / "last.ckpt")
    _medgen_ckpt(tmp_path / "other" / "run" / "checkpoints" / "epoch=1.ckpt")
    assert resolve_checkpoint(tmp_path / "other") == one_run  # one run: its last.ckpt


def test_missing_checkpoint_is_a_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="nope.ckpt"):
        resolve_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint(tmp_path)


def test_graph_vae_weights_that_do_not_fit_name_the_keys(tmp_path):
    from medgen.molecules.module import GraphVAEModule

    torch.manual_seed(0)
    small = GraphVAEModule(**TINY_VAE)
    hp = dict(small.hparams)
    hp["network"] = {**hp["network"], "latent_dim": 6}  # rebuilt with another latent size
    path = tmp_path / "vae.ckpt"
    torch.save({"hyper_parameters": hp, "state_dict": small.state_dict()}, path)
    err = _raises(path, "weights do not fit the GraphVAEModule", GraphVAEModule.from_checkpoint)
    assert "in the file" in str(err) and "in the model" in str(err)  # names shapes of a key

    state = dict(small.state_dict())
    dropped = next(iter(state))
    del state[dropped]
    torch.save({"hyper_parameters": dict(small.hparams), "state_dict": state}, path)
    err = _raises(path, "weights do not fit", GraphVAEModule.from_checkpoint)
    assert f"missing {dropped}" in str(err)


def test_diffusion_weights_that_do_not_fit_name_the_keys(tmp_path):
    from medgen.imaging.diffusion import DiffusionModule

    torch.manual_seed(0)
    module = DiffusionModule(**TINY_UNET)
    hp = dict(module.hparams)
    hp["network"] = {**hp["network"], "channels": [16, 16]}
    path = tmp_path / "ddpm.ckpt"
    torch.save({"hyper_parameters": hp, "state_dict": module.state_dict()}, path)
    err = _raises(path, "weights do not fit the DiffusionModule", DiffusionModule.from_checkpoint)
    # the first mismatching keys with both shapes (the raw weights or their EMA copy)
    assert ".weight: (" in str(err) and "in the file" in str(err) and "in the model" in str(err)
    # and a good checkpoint of the same module still loads
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    loaded = DiffusionModule.from_checkpoint(path)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)


def test_module_loaders_reject_the_other_kind(tmp_path):
    from medgen.imaging.diffusion import DiffusionModule
    from medgen.molecules.module import GraphVAEModule

    vae = _medgen_ckpt(tmp_path / "g.ckpt", kind="graph_vae")
    _raises(vae, "not a diffusion3d model", DiffusionModule.from_checkpoint)
    ddpm = _medgen_ckpt(tmp_path / "d.ckpt", kind="diffusion3d")
    _raises(ddpm, "not a graph_vae", GraphVAEModule.from_checkpoint)
