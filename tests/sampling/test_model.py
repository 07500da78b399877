"""Sampling: per-sample seeding, index sharding, and the Trainer.predict path into a folder."""

from __future__ import annotations

import csv
import itertools

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen import generation
from medgen.imaging import cohort as cohort_module
from medgen.imaging.api import generate_volumes
from medgen.imaging.cohort import VolumeCohort, intact_indices
from medgen.imaging.samplers import resolve_condition

from .helpers import StandIn, cohort_for, settings, temporaries, tiny


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_covers_every_index_once(world_size):
    for n in range(0, 11):
        shards = [generation.shard(n, r, world_size) for r in range(world_size)]
        flat = list(itertools.chain.from_iterable(shards))
        assert sorted(flat) == list(range(n))  # none missing, none twice, no padding
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        dataset = generation.IndexDataset(range(100, 100 + n))
        sampler = generation.ShardSampler(dataset, rank=world_size - 1, world_size=world_size)
        assert list(sampler) == shards[-1] and len(sampler) == len(shards[-1])
    with pytest.raises(ValueError, match="rank 4 is not in a world of size 4"):
        generation.shard(3, 4, 4)


def test_sample_i_is_the_same_for_any_batch_size_and_rerun():
    module = StandIn()
    one = generate_volumes(module, 8, settings(seed=3, steps=4), batch_size=1)
    eight = generate_volumes(module, 8, settings(seed=3, steps=4), batch_size=8)
    again = generate_volumes(module, 8, settings(seed=3, steps=4), batch_size=3)
    assert one.shape == (8, 1, 8, 8, 8)
    torch.testing.assert_close(one, eight, atol=1e-5, rtol=0)
    torch.testing.assert_close(one, again, atol=1e-5, rtol=0)
    assert not torch.allclose(one[0], one[1])  # samples differ from each other
    other = generate_volumes(module, 2, settings(seed=4, steps=4), batch_size=2)
    assert not torch.allclose(one[:2], other)
    # sample 5 alone, as another rank would draw it
    alone = module.generate([5], settings(seed=3, steps=4)).items
    torch.testing.assert_close(alone[0], one[5], atol=1e-5, rtol=0)


def test_bad_sampling_arguments_are_named():
    module = tiny("ddpm")
    with pytest.raises(ValueError, match="sampler='euler'"):
        generate_volumes(module, 1, settings().replace(sampler="euler"))
    with pytest.raises(ValueError, match="steps=0"):
        generate_volumes(module, 1, settings(steps=0))
    with pytest.raises(ValueError, match="trained without class conditioning"):
        generate_volumes(module, 1, settings(condition=1))
    with pytest.raises(ValueError, match=r"eta=0\.5 .*ddpm"):
        module.resolve_settings(settings(sampler="ddpm", eta=0.5))
    with pytest.raises(ValueError, match=r"eta=1\.5"):
        module.resolve_settings(settings(sampler="ddim", eta=1.5))
    with pytest.raises(ValueError, match="temperature=0.5"):
        module.resolve_settings(settings(temperature=0.5))
    names = ["small", "medium", "large"]
    assert resolve_condition("large", 3, names) == (2, "large")
    assert resolve_condition(0, 3, names) == (0, "small")
    with pytest.raises(ValueError, match="out of range 0..2"):
        resolve_condition(3, 3, names)
    with pytest.raises(ValueError, match="'huge' is not a class"):
        resolve_condition("huge", 3, names)


def test_resolved_settings_record_what_runs_and_are_idempotent():
    module = tiny("ddpm")
    s = module.resolve_settings(settings())
    assert (s.sampler, s.steps, s.eta, s.condition) == ("ddim", 10, 0.0, None)
    assert module.resolve_settings(s) == s
    assert module.resolve_settings(settings(sampler="ddpm", steps=4)).eta == 1.0
    assert tiny("rflow").resolve_settings(settings()).eta is None


def test_predict_into_folder_matches_the_api_and_resumes(tmp_path):
    module, out = StandIn(), tmp_path / "synth"
    s = settings(seed=11, sampler="ddim", steps=4)
    common = dict(out=out, checkpoint=tmp_path / "ckpt")
    summary = generation.sample_to(module, s, n=5, batch_size=2, **common)
    assert summary["written"] == 5 and summary["count"] == 5
    expected = generate_volumes(module, 5, s, batch_size=5)
    cohort = cohort_for(module, out, seed=11, sampler="ddim", steps=4)
    for i in range(5):
        data = np.asarray(nib.load(out / "images" / f"sample_{i:05d}.nii.gz").dataobj)
        ref = cohort.to_source_units(expected[i])
        assert np.abs(data.astype(int) - ref.astype(int)).max() <= 1  # 1 HU: float rounding
    with open(out / "manifest.csv", newline="") as fh:
        assert [r["index"] for r in csv.DictReader(fh)] == ["0", "1", "2", "3", "4"]
    # rerun: nothing to draw; a larger n draws only the new ones
    assert generation.sample_to(module, s, n=5, batch_size=2, **common)["written"] == 0
    assert generation.sample_to(module, s, n=7, batch_size=4, **common)["written"] == 2
    assert cohort.done() == set(range(7)) == intact_indices(out)
    with pytest.raises(FileExistsError, match="seed: 11 there, 12 now"):
        generation.sample_to(module, s.replace(seed=12), n=1, **common)


def test_killed_sampling_run_resumes_exactly(tmp_path, monkeypatch):
    module, out, n, k = StandIn(), tmp_path / "synth", 6, 3
    s, common = settings(seed=0, steps=2), dict(out=out, checkpoint=tmp_path / "ckpt")
    real_write = VolumeCohort.write_sample
    count = []

    def dying_write(self, *args, **kwargs):
        if len(count) == k:
            raise RuntimeError("simulated kill")
        count.append(1)
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(cohort_module.VolumeCohort, "write_sample", dying_write)
    with pytest.raises(RuntimeError, match="simulated kill"):
        generation.sample_to(module, s, n=n, batch_size=2, **common)
    monkeypatch.setattr(cohort_module.VolumeCohort, "write_sample", real_write)
    cohort = cohort_for(module, out, seed=0, steps=2)
    assert cohort.done() == set(range(k))
    (out / "images" / ".sample_00003.tmp-dead.nii.gz").write_bytes(b"half")
    summary = generation.sample_to(module, s, n=n, batch_size=2, **common)
    assert summary["written"] == n - k and summary["count"] == n
    assert temporaries(out) == []
    assert sorted(p.name for p in (out / "images").glob("*.nii.gz")) == [
        f"sample_{i:05d}.nii.gz" for i in range(n)
    ]


def test_several_channels_sample_export_and_preview(tmp_path):
    """C comes from DataMeta.channels: (B, 2, D, H, W) volumes, 4D NIfTI, one preview row each."""
    module, out = StandIn(channels=2), tmp_path / "two"
    summary = generation.sample_to(module, settings(seed=1), out=out, checkpoint=tmp_path, n=2)
    assert summary["count"] == 2 and summary["preview"]
    img = nib.load(out / "images" / "sample_00000.nii.gz")
    assert img.shape == (8, 8, 8, 2) and np.asarray(img.dataobj).dtype == np.int16
    x = module.generate([0], settings(seed=1)).items
    assert x.shape == (1, 2, 8, 8, 8)
    with pytest.raises(ValueError, match=r"\(2, D, H, W\)"):
        cohort_for(module, tmp_path / "x").to_source_units(x[0, :1])
