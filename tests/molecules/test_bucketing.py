"""Size-bucketed training batches: every molecule once per epoch, like sizes together, seeded."""

import torch

from medgen.molecules.data import GraphDataModule, SizeBucketSampler


def _sizes(n: int = 1037) -> torch.Tensor:
    return torch.randint(5, 40, (n,), generator=torch.Generator().manual_seed(3))


def test_each_index_once_per_epoch_and_the_short_batch_last():
    sizes = _sizes()
    sampler = SizeBucketSampler(sizes, 64, pool=4, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(len(sizes)))
    batches = sampler.batches(1)  # the epoch after the one drawn above
    assert [len(b) for b in batches[:-1]] == [64] * (len(batches) - 1)
    assert len(batches[-1]) == len(sizes) - 64 * (len(batches) - 1)


def test_batches_hold_like_sizes():
    sizes = _sizes()
    spread = [
        float(sizes[b].max() - sizes[b].min())
        for b in SizeBucketSampler(sizes, 64, pool=8).batches(0)
    ]
    random = [float(sizes[b].max() - sizes[b].min()) for b in torch.randperm(len(sizes)).split(64)]
    # pools of 8 batches sorted by size: each batch spans ~1/8 of the size range
    assert sum(spread) / len(spread) < 0.5 * sum(random) / len(random)


def test_epochs_differ_and_repeat_with_the_seed():
    sizes = _sizes()
    a, b = SizeBucketSampler(sizes, 64, seed=0), SizeBucketSampler(sizes, 64, seed=0)
    first, again = list(a), list(b)
    assert first == again
    assert list(a) != first  # next epoch, new order
    b.set_epoch(0)
    assert list(b) == first


def test_the_datamodule_uses_it_for_training_only(cache_dir):
    dm = GraphDataModule(limit=400, batch_size=32, val_fraction=0.1, cache_dir=str(cache_dir))
    dm.setup()
    train = dm.train_dataloader()
    assert isinstance(train.sampler, SizeBucketSampler)
    assert not isinstance(dm.val_dataloader().sampler, SizeBucketSampler)
    seen = [int(n) for batch in train for n in batch.n_atoms]
    assert len(seen) == len(dm.train_set)
    plain = GraphDataModule(limit=400, batch_size=32, val_fraction=0.1, cache_dir=str(cache_dir),
                            bucket_by_size=False)  # fmt: skip
    plain.setup()
    assert not isinstance(plain.train_dataloader().sampler, SizeBucketSampler)
