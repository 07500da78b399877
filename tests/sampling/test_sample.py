"""Sampling: per-sample seeding, index sharding, and the Trainer.predict path into a folder."""

from __future__ import annotations

import csv
import itertools

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.imaging import predict
from medgen.imaging import sample as sm
from medgen.imaging.export import intact_indices, to_source_units

from .helpers import StandIn, spec_for, temporaries


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_covers_every_index_once(world_size):
    for n in range(0, 11):
        shards = [sm.shard(n, r, world_size) for r in range(world_size)]
        flat = list(itertools.chain.from_iterable(shards))
        assert sorted(flat) == list(range(n))  # none missing, none twice, no padding
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        dataset = sm.IndexDataset(range(100, 100 + n))
        sampler = sm.ShardSampler(dataset, rank=world_size - 1, world_size=world_size)
        assert list(sampler) == shards[-1] and len(sampler) == len(shards[-1])
    with pytest.raises(ValueError, match="rank 4 is not in a world of size 4"):
        sm.shard(3, 4, 4)


def test_sample_i_is_the_same_for_any_batch_size_and_rerun():
    module = StandIn()
    one = sm.generate(module, 8, seed=3, batch_size=1, steps=4)
    eight = sm.generate(module, 8, seed=3, batch_size=8, steps=4)
    again = sm.generate(module, 8, seed=3, batch_size=3, steps=4)
    assert one.shape == (8, 1, 8, 8, 8)
    torch.testing.assert_close(one, eight, atol=1e-5, rtol=0)
    torch.testing.assert_close(one, again, atol=1e-5, rtol=0)
    assert not torch.allclose(one[0], one[1])  # samples differ from each other
    other = sm.generate(module, 2, seed=4, batch_size=2, steps=4)
    assert not torch.allclose(one[:2], other)
    # sample 5 alone, as another rank would draw it
    alone = sm.draw_samples(module, [5], seed=3, steps=4)
    torch.testing.assert_close(alone[0], one[5], atol=1e-5, rtol=0)


def test_bad_sampling_arguments_are_named():
    module = StandIn()
    with pytest.raises(ValueError, match="sampler='euler'"):
        sm.generate(module, 1, sampler="euler")
    with pytest.raises(ValueError, match="steps=0"):
        sm.generate(module, 1, steps=0)
    with pytest.raises(ValueError, match="trained without class conditioning"):
        sm.generate(module, 1, condition=1)
    hp = {"num_classes": 3, "data_meta": {"class_names": ["small", "medium", "large"]}}
    assert sm.resolve_condition("large", hp) == (2, "large")
    assert sm.resolve_condition(0, hp) == (0, "small")
    with pytest.raises(ValueError, match="out of range 0..2"):
        sm.resolve_condition(3, hp)
    with pytest.raises(ValueError, match="'huge' is not a class"):
        sm.resolve_condition("huge", hp)


def test_predict_into_folder_matches_the_api_and_resumes(tmp_path):
    module, out = StandIn(), tmp_path / "synth"
    spec = spec_for(module, seed=11, sampler="ddim", steps=4)
    summary = sm.sample_to_folder(module, spec, out=out, n=5, batch_size=2)
    assert summary["written"] == 5 and summary["count"] == 5
    expected = sm.generate(module, 5, seed=11, sampler="ddim", steps=4, batch_size=5)
    for i in range(5):
        data = np.asarray(nib.load(out / "images" / f"sample_{i:05d}.nii.gz").dataobj)
        ref = to_source_units(expected[i], spec)
        assert np.abs(data.astype(int) - ref.astype(int)).max() <= 1  # 1 HU: float rounding
    with open(out / "manifest.csv", newline="") as fh:
        assert [r["index"] for r in csv.DictReader(fh)] == ["0", "1", "2", "3", "4"]
    # rerun: nothing to draw; a larger n draws only the new ones
    assert sm.sample_to_folder(module, spec, out=out, n=5, batch_size=2)["written"] == 0
    assert sm.sample_to_folder(module, spec, out=out, n=7, batch_size=4)["written"] == 2
    assert intact_indices(out, spec) == set(range(7))
    with pytest.raises(FileExistsError, match="seed: 11 there, 12 now"):
        other = spec_for(module, seed=12, sampler="ddim", steps=4)
        sm.sample_to_folder(module, other, out=out, n=1)


def test_killed_sampling_run_resumes_exactly(tmp_path, monkeypatch):
    module, out, n, k = StandIn(), tmp_path / "synth", 6, 3
    spec = spec_for(module, seed=0, steps=2)
    real_write = predict.write_sample  # SampleWriter looks it up there
    count = []

    def dying_write(*args, **kwargs):
        if len(count) == k:
            raise RuntimeError("simulated kill")
        count.append(1)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(predict, "write_sample", dying_write)
    with pytest.raises(RuntimeError, match="simulated kill"):
        sm.sample_to_folder(module, spec, out=out, n=n, batch_size=2)
    monkeypatch.setattr(predict, "write_sample", real_write)
    assert intact_indices(out, spec) == set(range(k))
    (out / "images" / ".sample_00003.tmp-dead.nii.gz").write_bytes(b"half")
    summary = sm.sample_to_folder(module, spec, out=out, n=n, batch_size=2)
    assert summary["written"] == n - k and summary["count"] == n
    assert temporaries(out) == []
    assert sorted(p.name for p in (out / "images").glob("*.nii.gz")) == [
        f"sample_{i:05d}.nii.gz" for i in range(n)
    ]
