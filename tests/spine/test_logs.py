"""What a run prints: no third-party notices, one key per metric, the parameter count without
the EMA copy, learning rates people can read."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import pytest
from torch import nn

from medgen.utils.logging import format_metrics, format_value, parameter_summary
from medgen.utils.warnings import KNOWN_LOG_LINES, QUIET_LOGGERS, quiet_third_party
from tests.conftest import TEST_CONFIG_DIR, run_medgen

LEAFSPEC = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`"


@pytest.fixture
def restore_filters():
    loggers = [logging.getLogger(name) for name, _ in KNOWN_LOG_LINES]
    before = [list(lg.filters) for lg in loggers]
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    for lg, filters in zip(loggers, before, strict=True):
        lg.filters[:] = filters
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_known_notices_are_silenced_and_nothing_else(restore_filters, caplog):
    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    quiet_third_party()
    quiet_third_party()  # idempotent
    warnings.warn(LEAFSPEC, FutureWarning, stacklevel=1)
    warnings.warn("some other library change", FutureWarning, stacklevel=1)
    warnings.warn(LEAFSPEC, UserWarning, stacklevel=1)  # same text, other kind: still shown
    assert [(w.category, str(w.message)) for w in restore_filters] == [
        (FutureWarning, "some other library change"),
        (UserWarning, LEAFSPEC),
    ]
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing something")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    assert len(logging.getLogger(KNOWN_LOG_LINES[0][0]).filters) == 1
    chatter = logging.getLogger("alembic.runtime.plugins")
    assert not chatter.isEnabledFor(logging.INFO) and chatter.isEnabledFor(logging.WARNING)


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("lr", 5e-4, "5.0e-04"),
        ("lr-AdamW", 2.0000000000000003e-06, "2.0e-06"),
        ("train/loss", 0.839481, "0.8395"),
        ("val/loss", 1234.5678, "1235"),
        ("global_step", 8.0, "8"),
        ("val/validity", 1.0, "1"),
        ("val/kl", 1.5e-7, "1.5e-07"),
    ],
)
def test_format_value(name, value, text):
    assert format_value(name, value) == text


def test_format_metrics_sorted_pairs():
    assert format_metrics({"val/loss": 0.5, "lr-AdamW": 1e-3}) == "lr-AdamW=1.0e-03  val/loss=0.5"


def test_parameter_summary_does_not_count_the_ema_copy():
    from medgen.imaging.ema import EMA

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 3)  # 15 parameters
            self.ema = EMA(self.net)
            self.frozen = nn.Linear(2, 1).requires_grad_(False)  # 3, not trained

    text = parameter_summary(Model())
    lines = text.splitlines()
    assert lines[-1].startswith("parameters: 18 (15 trainable, 3 frozen;")
    assert lines[-1].endswith("EMA copies (15) not counted")
    ema_row = next(ln for ln in lines if ln.startswith("ema "))
    assert "not counted" in ema_row and "EMA" in ema_row


def test_a_fit_logs_its_parameters_and_lr_and_one_key_per_metric(compose_cfg, caplog):
    from medgen.tasks.train import train

    tiny = [f"hydra.searchpath=[file://{TEST_CONFIG_DIR}]", "data=tiny", "model=tiny"]
    cfg = compose_cfg("train", [*tiny, "debug=fast", "trainer.max_epochs=1"], job=True)
    with caplog.at_level(logging.INFO, logger="medgen"):
        train(cfg)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "model TinyModule:" in text and "parameters: " in text
    assert "optimizer SGD: lr=5.0e-02" in text
    assert "lr-SGD=5.0e-02" in text  # the metrics line at the end
    (metrics_csv,) = Path(cfg.paths.output_dir).rglob("metrics.csv")
    with open(metrics_csv, newline="") as fh:
        header = next(csv.reader(fh))
    assert "train/loss" in header
    assert not [k for k in header if k.endswith(("_step", "_epoch"))], header


@pytest.mark.slow
def test_a_run_prints_no_tips_or_deprecations_and_logs_one_key_per_metric(tmp_path):
    tiny = [f"hydra.searchpath=[file://{TEST_CONFIG_DIR}]", "data=tiny", "model=tiny"]
    out = run_medgen(["train", *tiny, "debug=fast", "trainer.max_epochs=1"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "💡" not in text and "Tip:" not in text and "LitLogger" not in text
    assert "deprecated" not in text.lower()
    assert "Skipping setting a default `ModelSummary`" not in text
    assert "parameters: " in text and "model TinyModule:" in text
    assert "optimizer SGD: lr=5.0e-02" in text
    (metrics_csv,) = (tmp_path / "outputs" / "train").rglob("metrics.csv")
    with open(metrics_csv, newline="") as fh:
        header = next(csv.reader(fh))
    assert "train/loss" in header
    assert not [k for k in header if k.endswith(("_step", "_epoch"))], header


@pytest.mark.slow
def test_graph_vae_logs_no_step_and_epoch_duplicates(compose_cfg, tmp_path, monkeypatch):
    from medgen.tasks.train import train

    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_cfg(
        "train",
        ["model=graph_vae", "data=smiles", "debug=fast", "trainer.max_epochs=1",
         "model.network.hidden_dim=16", "model.network.latent_dim=4", "model.network.pair_dim=8",
         "callbacks.molecule_sampling.n_samples=4", "callbacks.molecule_sampling.n_recon=4",
         "data.limit=20"],
        job=True,
    )  # fmt: skip
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/loss" in metrics
    doubled = [k for k in metrics if k.endswith(("_step", "_epoch")) and k != "global_step"]
    assert not doubled, sorted(metrics)
    (metrics_csv,) = Path(cfg.paths.output_dir).rglob("metrics.csv")
    header = metrics_csv.read_text().splitlines()[0].split(",")
    assert not [k for k in header if k.endswith(("_step", "_epoch"))], header


def test_molecule_metrics_table_says_direction_and_what_each_row_is():
    import math

    from medgen.tasks.evaluate import format_table

    table = format_table(
        {"valid": 0.5, "unique@1000": math.nan, "FCD/Test": 12.0, "QED": 0.05, "dualuse_alerts": 2}
    )
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert "n/a (fewer than 1000 valid samples)" in rows["unique@1000"]
    assert "↓ lower" in rows["FCD/Test"] and "Fréchet ChemNet distance to Test" in rows["FCD/Test"]
    assert "↓ lower" in rows["QED"] and "Wasserstein-1 distance" in rows["QED"]
    assert "to Test" in rows["QED"]  # measured against the first reference
    assert "↑ higher" in rows["valid"] and "0.5000" in rows["valid"]
    assert rows["dualuse_alerts"].split()[1] == "2"


def test_unique_at_k_is_not_reported_below_k_molecules():
    import math

    from medgen.chem.evaluation import evaluate_smiles

    m = evaluate_smiles(["CCO", "OCC", "CCN", "not_a_smiles"], k=[3, 10], dualuse=False)
    assert m["valid"] == 0.75
    assert m["unique@3"] == pytest.approx(2 / 3)  # CCO and OCC are one molecule
    assert math.isnan(m["unique@10"])


def test_scan_metrics_table_has_arrows():
    from medgen.imaging.evaluation.report import format_table

    metrics = {
        "fidelity/frechet": 1.5,
        "fidelity/mmd": 8.1772e15,
        "memorization/distance_ratio": None,
    }
    result = {"metrics": metrics, "details": {}}
    rows = {line.split()[0]: line for line in format_table(result).splitlines()[2:]}
    assert "↓ lower" in rows["fidelity/frechet"] and "1.5000" in rows["fidelity/frechet"]
    assert "↑ higher, ~1" in rows["memorization/distance_ratio"]
    assert "n/a" in rows["memorization/distance_ratio"]
    assert rows["fidelity/mmd"].split()[1] == "8.177e+15"


def test_a_scheduled_learning_rate_is_logged_with_its_base_rate():
    from medgen.tasks.train import _rate

    assert _rate({"lr": 1e-3}) == "1.0e-03"
    # a warm-up scheduler starts below the optimizer's lr: both are said
    assert (
        _rate({"lr": 1.7e-6, "initial_lr": 5e-4})
        == "5.0e-04 (scheduled; 1.7e-06 at the first step)"
    )
