"""The cohort card of a volume cohort: its sections and figures."""

from __future__ import annotations

import json

from medgen.card import card_paths, render_markdown, write_card
from tests.release.volume_helpers import cohort, smooth_volumes, write, write_training_folder

SECTIONS = [
    "Model",
    "Training data",
    "Sampling settings",
    "Cohort",
    "Evaluation",
    "Memorization audit",
    "Bias check",
    "Intended use and limits",
]


def test_every_export_writes_a_card_with_its_figures(tmp_path):
    out = tmp_path / "synth"
    c = cohort(out)
    write(c, smooth_volumes(3, seed=4))
    out.joinpath("evaluation.json").write_text(json.dumps({"metrics": {"fid": 12.5, "x": None}}))
    c.finalize(3, preview=False)
    card = json.loads((out / "card.json").read_text())
    assert list(card["sections"]) == SECTIONS
    s = card["sections"]
    assert s["Model"]["checkpoint_sha256"] == "0" * 64
    assert s["Cohort"]["samples"] == 3 and s["Cohort"]["units"] == "HU"
    assert s["Evaluation"] == {"fid": 12.5}
    assert s["Memorization audit"].startswith("not run")
    bias = s["Bias check"]
    assert bias["cohort volumes"] == 3
    fractions = [bias[f"{k} fraction"]["cohort"] for k in ("air", "fat", "soft", "bone")]
    assert all(0.0 <= f <= 1.0 for f in fractions) and sum(fractions) <= 1.0
    assert "training side" in bias  # no audit: not compared
    md = (out / "CARD.md").read_text()
    for name in SECTIONS:
        assert f"## {name}" in md
    assert "| fid | 12.5 |" in md and "not for diagnosis" in md


def test_the_audit_gives_the_card_its_training_side(tmp_path):
    folder = write_training_folder(tmp_path / "train", smooth_volumes(6, seed=5))
    out = tmp_path / "synth"
    c = cohort(out, audit=True, audit_train=str(folder))
    write(c, -smooth_volumes(3, seed=9))
    c.finalize(3, preview=False)
    bias = json.loads((out / "card.json").read_text())["sections"]["Bias check"]
    assert set(bias["air fraction"]) == {"cohort", "training"}
    shares = bias["body-size bins (training tertiles), cohort share"]
    assert list(shares) == ["small", "medium", "large"] and abs(sum(shares.values()) - 1) < 1e-6


def test_write_card_beside_a_file_and_render(tmp_path):
    card = {"title": "T", "sections": {"A": {"k": 1.23456}, "B": ["x|y"], "C": "text"}}
    md, js = write_card(tmp_path / "mols.csv", card)
    assert (md, js) == card_paths(tmp_path / "mols.csv")
    assert md.name == "mols.CARD.md" and js.name == "mols.card.json"
    assert json.loads(js.read_text())["sections"]["A"] == {"k": 1.23456}
    text = render_markdown(card)
    assert "| k | 1.235 |" in text and "- x\\|y" in text and "## C\n\ntext" in text
