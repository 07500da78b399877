"""Every cache under one folder (``paths.cache_dir``), never beside a user's data files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from medgen.errors import ConfigError
from medgen.utils.cache import cache_folder, cache_root


def test_cache_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDGEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "medgen"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "medgen"
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    assert cache_root("~/c") == tmp_path / "home" / "c"


def test_cache_folder_is_made_and_falls_back_when_it_cannot_be(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder("graphs", tmp_path / "c") == tmp_path / "c" / "graphs"
    assert (tmp_path / "c" / "graphs").is_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # nothing can be made below it, not even by root
    folder = cache_folder("reference", blocker / "cache")
    assert folder == tmp_path / "home" / ".cache" / "medgen" / "reference" and folder.is_dir()
    with pytest.raises(ValueError, match="unknown cache kind 'graph'"):
        cache_folder("graph", tmp_path / "c")


def test_no_writable_cache_folder_is_a_config_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("HOME", str(blocker))
    with pytest.raises(ConfigError, match="paths.cache_dir"):
        cache_folder("graphs", blocker / "cache")


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_read_only_data_folder_works_and_gets_no_cache(tmp_path, monkeypatch):
    from medgen.molecules.featurize import load_source

    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "mols.smi").write_text("CCO\nc1ccccc1\nnot_a_smiles\nCC(=O)O\n")
    before = _tree(data)
    data.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        feats, cache = load_source(data / "mols.smi")
        again, cache_again = load_source(data / "mols.smi")
    finally:
        data.chmod(stat.S_IRWXU)
    assert _tree(data) == before  # nothing written beside the user's file
    assert cache.parent == tmp_path / "cache" / "graphs" and cache.is_file()
    assert cache_again == cache and again.smiles == feats.smiles
    assert len(feats) == 3 and len(feats.rejects) == 1


def test_paths_cache_dir_default_and_override(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDGEN_CACHE_DIR", raising=False)
    for task in ("train", "evaluate", "screen", "sample"):
        cfg = compose_cfg(task, [])
        assert Path(cfg.paths.cache_dir) == Path(cfg.paths.data_dir) / "cache", task
    cfg = compose_cfg("train", ["model=graph_vae", "data=smiles"])
    assert cfg.data.cache_dir == f"{cfg.paths.cache_dir}/graphs"
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert compose_cfg("evaluate", []).paths.cache_dir == str(tmp_path / "elsewhere")
