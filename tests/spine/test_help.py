"""``medgen <task> --help``: the groups a task composes, its keys and their YAML comments."""

from __future__ import annotations

from pathlib import Path

from medgen.cli import main, yaml_comments

CONF = Path(__file__).resolve().parents[2] / "conf"


def _help(capsys, *args: str) -> tuple[str, dict[str, str]]:
    assert main(list(args)) == 0
    out = capsys.readouterr().out
    groups = (
        out.split("config groups", 1)[1].split("settings", 1)[0] if "config groups" in out else ""
    )
    return out, {
        line.split(":")[0].strip(): line.split(":", 1)[1]
        for line in groups.splitlines()[1:]
        if line.startswith("  ") and not line.startswith("   ") and ":" in line
    }


def test_sample_help_lists_its_keys_with_their_comments_and_only_its_groups(capsys):
    out, groups = _help(capsys, "sample", "--help")
    lines = out.splitlines()
    for key, comment in (
        ("ckpt=???", "checkpoint file, or a run dir holding checkpoints/last.ckpt"),
        ("n=16", "how many samples"),
        ("out=???", "output: a folder for volumes, a .csv/.sdf file for molecules"),
    ):
        at = lines.index(f"  {key}")
        assert lines[at + 1].strip().startswith(comment), (key, lines[at + 1])
    assert set(groups) == {"trainer", "paths"}  # sample composes no data or model group
    assert "*cpu" in groups["trainer"]
    assert not [ln for ln in lines if ln.startswith(("  data.", "  model."))]


def test_train_help_lists_the_model_and_data_choices(capsys):
    _, groups = _help(capsys, "train", "--help")
    for group, chosen in (("model", "ddpm3d"), ("data", "phantom")):
        options = {p.stem for p in (CONF / group).glob("*.yaml")}
        listed = {o.strip().lstrip("*") for o in groups[group].split(",")}
        assert listed == options
        assert f"*{chosen}" in groups[group]
    _, groups = _help(capsys, "train", "model=graph_vae", "data=smiles", "--help")
    assert "*graph_vae" in groups["model"] and "*smiles" in groups["data"]


def test_group_keys_carry_the_comment_of_their_option_file(capsys):
    out, _ = _help(capsys, "train", "model=graph_vae", "data=smiles", "--help")
    lines = out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("  data.smiles_column="))
    assert "SMILES" in lines[at + 1]


def test_a_bad_override_in_help_is_one_line_and_exit_2(capsys):
    assert main(["train", "model=no_such_model", "--help"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medgen train: error: bad override") and "no_such_model" in err
    assert "\n" not in err


def test_yaml_comments_known_answer():
    text = """# A file about things.
# Second header line.
defaults:
  - _self_

# how many
n: 3
# the network
net:
  # its width
  width: 8
  depth: 2
# low and high end
low: 0
high: 1

orphan: true
"""
    header, comments = yaml_comments(text)
    assert header == "A file about things.\nSecond header line."
    assert comments == {
        "n": "how many",
        "net": "the network",
        "net.width": "its width",
        "low": "low and high end",
        "high": "(see low)",  # its name is in the comment above
    }
