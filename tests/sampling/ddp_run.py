"""Two-rank CPU (Gloo) sampling run; test_ddp.py runs ``python -m tests.sampling.ddp_run``.

Lightning re-executes this module for rank 1, so everything runs under ``__main__``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medgen.generation import sample_to
from tests.sampling.helpers import settings, tiny

if __name__ == "__main__":
    out, n = sys.argv[1], int(sys.argv[2])
    checkpoint = Path(out).with_name("stand-in.ckpt")  # only its sha256 is recorded
    if not checkpoint.exists():
        checkpoint.write_bytes(b"tiny")
    module = tiny("ddpm")  # stochastic DDPM steps: per-step noise from each sample's generator
    summary = sample_to(
        module,
        settings(seed=5, sampler="ddpm", steps=4),
        out=out,
        checkpoint=checkpoint,
        n=n,
        batch_size=2,
        trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp"},
    )
    # one file per rank: both ranks share stdout
    Path(out).with_name(f"summary_{summary['rank']}.json").write_text(json.dumps(summary))
