"""A 2-process CPU (Gloo) run draws exactly n distinct samples, each once (in a subprocess)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter

import nibabel as nib
import numpy as np

from medgen.imaging.api import generate_volumes
from medgen.utils.provenance import file_sha256

from .helpers import cohort_for, settings, temporaries, tiny


def test_two_ranks_draw_each_sample_exactly_once(tmp_path, repo_root):
    out, n = tmp_path / "synth", 7
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sampling.ddp_run", str(out), str(n)],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = [json.loads((tmp_path / f"summary_{r}.json").read_text()) for r in (0, 1)]
    assert sum(s["written"] for s in summaries) == n
    assert summaries[0]["written_total"] == n and summaries[0]["count"] == n
    sidecars = [json.loads(p.read_text()) for p in (out / "images").glob("sample_*.json")]
    assert sorted(s["index"] for s in sidecars) == list(range(n))
    assert Counter(s["rank"] for s in sidecars) == {0: 4, 1: 3}  # every other index per rank
    assert len({s["sha256"] for s in sidecars}) == n  # n distinct volumes
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in rows] == list(range(n))
    assert all(file_sha256(out / r["file"]) == r["sha256"] for r in rows)
    assert temporaries(out) == []
    # the same volumes as one process drawing them all in one batch (1 HU: float rounding)
    module = tiny("ddpm")
    s = settings(seed=5, sampler="ddpm", steps=4)
    expected = generate_volumes(module, n, s, batch_size=n)
    cohort = cohort_for(module, out, seed=5, sampler="ddpm", steps=4)
    for i in range(n):
        data = np.asarray(nib.load(out / f"images/sample_{i:05d}.nii.gz").dataobj).astype(int)
        assert np.abs(data - cohort.to_source_units(expected[i]).astype(int)).max() <= 1
