"""Two-rank CPU (Gloo) sampling run; test_ddp.py runs ``python -m tests.sampling.ddp_run``.

Lightning re-executes this module for rank 1, so everything runs under ``__main__``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medgen.imaging.sample import sample_to_folder
from tests.sampling.helpers import spec_for, tiny

if __name__ == "__main__":
    out, n = sys.argv[1], int(sys.argv[2])
    module = tiny("ddpm")  # stochastic DDPM steps: per-step noise from each sample's generator
    summary = sample_to_folder(
        module,
        spec_for(module, seed=5, sampler="ddpm", steps=4),
        out=out,
        n=n,
        batch_size=2,
        trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp"},
    )
    # one file per rank: both ranks share stdout
    Path(out).with_name(f"summary_{summary['rank']}.json").write_text(json.dumps(summary))
