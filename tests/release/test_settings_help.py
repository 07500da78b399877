"""``medgen sample --help`` shows every release key with its own comment (not the comment that
opens its YAML file)."""

from __future__ import annotations

from medgen.cli import main

RELEASE_KEYS = {
    "share=false": "share=true writes only what may leave the site",
    "audit=false": "scan models: at finalize, check every sample against its nearest training",
    "allow_memorized=false": "finalize even when the audit flags samples",
    "audit_train=null": "the training data for the audit",
    "evaluation=null": "scan models: an evaluation.json",
    "layout=decathlon": "cohort folder layout: decathlon",
    "novel_only=false": "drop exact training copies",
    "dualuse=true": "screen every molecule for dual-use alerts",
    "train_smiles=null": "the training SMILES file for novelty and novel_only",
    "temperature=1.0": "softmax temperature of the decoder",
    "sampler=null": "ddpm | ddim | dpmpp | heun",
}


def test_sample_help_shows_each_release_key_with_its_comment(capsys):
    assert main(["sample", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for key, comment in RELEASE_KEYS.items():
        at = lines.index(f"  {key}")
        text = " ".join(line.strip() for line in lines[at + 1 : at + 4])
        assert comment in text, (key, text)
        assert "Sampling settings of" not in lines[at + 1], (key, lines[at + 1])
