"""Two-rank CPU (Gloo) sampling run; test_ddp.py runs ``python -m tests.sampling.ddp_run``.

Lightning re-executes this module for rank 1, so everything runs under ``__main__``.
"""

from __future__ import annotations

import json
import sys

from medgen.imaging.sample import sample_to_folder
from tests.sampling.helpers import StandIn, spec_for

if __name__ == "__main__":
    out, n = sys.argv[1], int(sys.argv[2])
    module = StandIn()
    summary = sample_to_folder(
        module,
        spec_for(module, seed=5, steps=2),
        out=out,
        n=n,
        batch_size=2,
        trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp"},
    )
    print("SUMMARY " + json.dumps(summary), flush=True)
