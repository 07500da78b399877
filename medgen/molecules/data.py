"""Featurized molecular graphs -> :class:`GraphDataModule`: train / val / test splits, the atom
vocabulary and the rejects.

Reading, featurizing and caching live in :mod:`medgen.molecules.featurize`; this module alone
decides which molecules a model sees. The splits are drawn with ``seed`` and are disjoint. The atom
vocabulary is built from the *training split only* (when not given): validation and test molecules
with atom types the training split lacks are rejected with that reason, as the model could never
decode them. Rows with atom types outside the vocabulary or more heavy atoms than ``max_atoms`` join
the featurizer's rejects in a rejects CSV (``line, smiles, reason``) next to the cache, copied to
the run dir when training. One bad row never stops a run.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medgen.errors import UserError
from medgen.molecules import featurize
from medgen.molecules.featurize import (
    EMBEDDED_SAMPLE,
    FeaturizedSource,
    cache_file,
    load_source,
)
from medgen.molecules.graph import GraphBatch, MolGraph, Vocabulary, collate_graphs
from medgen.molecules.stereo import StereoBatch, collate_stereo
from medgen.utils.atomic import atomic_write_text
from medgen.utils.logging import get_logger

log = get_logger(__name__)

Split = Literal["train", "val", "test"]


class GraphDataset(Dataset):
    """Molecules ``indices`` of a :class:`FeaturizedSource`, as :class:`MolGraph` items; with
    ``values`` (``(len(source), P)`` property values), ``(MolGraph, values row)`` items; with
    ``stereo``, ``(MolGraph, values row or None, stereo labels)`` items."""

    def __init__(
        self,
        source: FeaturizedSource,
        indices: Sequence[int],
        remap: torch.Tensor,
        values: torch.Tensor | None = None,
        stereo: bool = False,
    ):
        self.source, self.indices, self.remap, self.values = source, list(indices), remap, values
        self.stereo = stereo

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        k = self.indices[i]
        graph = self.source.graph(k, self.remap)
        values = None if self.values is None else self.values[k]
        if self.stereo:
            return graph, values, self.source.stereo(k)
        return graph if values is None else (graph, values)

    def graph(self, i: int) -> MolGraph:
        """Item ``i``'s graph (without its property values)."""
        return self.source.graph(self.indices[i], self.remap)


class ConditionedBatch(NamedTuple):
    """Padded graphs, their molecules' property values ``props (B, P)`` (raw units; ``(B, 0)``
    when none) and their stereo labels (None without ``data.stereo``)."""

    graphs: GraphBatch
    props: torch.Tensor
    stereo: StereoBatch | None = None

    def to(self, device: torch.device | str) -> ConditionedBatch:
        stereo = None if self.stereo is None else self.stereo.to(device)
        return ConditionedBatch(self.graphs.to(device), self.props.to(device), stereo)


def collate_items(items: Sequence[Any]) -> GraphBatch | ConditionedBatch:
    """:func:`collate_graphs`, or a :class:`ConditionedBatch` for ``(graph, values)`` and
    ``(graph, values or None, stereo)`` items."""
    if items and isinstance(items[0], tuple) and not isinstance(items[0], MolGraph):
        graphs = collate_graphs([item[0] for item in items])
        if items[0][1] is None:
            props = torch.zeros(len(items), 0)
        else:
            props = torch.stack([item[1] for item in items])
        stereo = collate_stereo([item[2] for item in items]) if len(items[0]) == 3 else None
        return ConditionedBatch(graphs, props, stereo)
    return collate_graphs(items)


def property_values(
    smiles: Sequence[str],
    names: Sequence[str],
    *,
    workers: int = 1,
    cache: Path | None = None,
    head_of: Path | None = None,
) -> torch.Tensor:
    """RDKit values ``(len(smiles), P)`` float32 of the properties ``names`` (``qed``, ``sa``,
    ``logp``, ...; :func:`medgen.molecules.api.property_function`), computed in ``workers``
    processes and cached in ``cache`` (``.npy``, read with ``allow_pickle=False``). A molecule
    whose value cannot be computed gets the column mean (reported). ``head_of``: the cache of a
    longer source whose first ``len(smiles)`` molecules these are (its first rows are used when
    ``cache`` is absent)."""
    import numpy as np

    from medgen.chem.parallel import map_chunks
    from medgen.molecules.conditioning import property_table

    if cache is not None and cache.is_file():
        table = np.load(cache, allow_pickle=False)
        if table.shape == (len(smiles), len(names)):
            return torch.from_numpy(table.astype(np.float32))
    if head_of is not None and head_of.is_file():
        table = np.load(head_of, allow_pickle=False)
        if table.ndim == 2 and table.shape[0] >= len(smiles) and table.shape[1] == len(names):
            log.info("properties of the first %d molecules from %s", len(smiles), head_of)
            table = np.ascontiguousarray(table[: len(smiles)], dtype=np.float32)
            if cache is not None:
                from medgen.utils.atomic import atomic_path

                with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, table, allow_pickle=False)
            return torch.from_numpy(table)
    chunks = [list(smiles[i : i + 5000]) for i in range(0, len(smiles), 5000)]
    parts, done = [], 0
    began = last_log = time.perf_counter()
    for part in map_chunks(property_table, chunks, n_jobs=workers, args=(list(names),)):
        parts.append(part)
        done += len(part)
        if time.perf_counter() - last_log >= featurize.PROGRESS_EVERY_S:
            last_log = time.perf_counter()
            rate = done / (last_log - began)
            log.info("properties: %s of %s molecules, %.0f/s, about %.0f min left",
                     f"{done:,}", f"{len(smiles):,}", rate,
                     (len(smiles) - done) / rate / 60)  # fmt: skip
    table = np.concatenate(parts) if parts else np.zeros((0, len(names)))
    bad = ~np.isfinite(table)
    if bad.any():
        means = np.nanmean(np.where(bad, np.nan, table), axis=0)
        table = np.where(bad, means[None, :], table)
        log.warning("%d property values could not be computed; they take the column mean",
                    int(bad.sum()))  # fmt: skip
    table = table.astype(np.float32)
    if cache is not None:
        from medgen.utils.atomic import atomic_path

        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.save(fh, table, allow_pickle=False)
    return torch.from_numpy(table)


class SizeBucketSampler(Sampler[int]):
    """A random order in which each run of ``batch_size`` indices holds molecules of similar size.

    Batches are padded to their largest molecule, so a batch of like sizes wastes little work
    (the decoder's pair terms grow with the square of the padded size). Each epoch draws a
    permutation (seeded by ``seed`` and the epoch), sorts each pool of ``pool * batch_size``
    indices by size, cuts it into batches and shuffles the batches; a last, smaller batch comes
    last so that the DataLoader's batch boundaries stay those of the buckets. Every index
    appears exactly once per epoch. Lightning calls :meth:`set_epoch`; without it each
    iteration advances the epoch itself.
    """

    def __init__(self, sizes: Sequence[int] | torch.Tensor, batch_size: int, *,
                 pool: int = 50, seed: int = 0):  # fmt: skip
        if batch_size < 1 or pool < 1:
            raise ValueError(f"batch_size and pool must be >= 1, got {batch_size}, {pool}")
        self.sizes = torch.as_tensor(sizes, dtype=torch.long)
        self.batch_size, self.pool, self.seed, self.epoch = batch_size, pool, seed, 0

    def __len__(self) -> int:
        return len(self.sizes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """The index batches of ``epoch``, in the order they are drawn."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.sizes), generator=gen)
        span = self.pool * self.batch_size
        full: list[torch.Tensor] = []
        rest: list[torch.Tensor] = []
        for lo in range(0, len(order), span):
            chunk = order[lo : lo + span]
            chunk = chunk[torch.argsort(self.sizes[chunk], stable=True)]
            for b in chunk.split(self.batch_size):
                (full if len(b) == self.batch_size else rest).append(b)
        shuffled = [full[k] for k in torch.randperm(len(full), generator=gen).tolist()]
        tail = torch.cat(rest) if rest else order[:0]
        return shuffled + list(tail.split(self.batch_size))

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        for batch in self.batches(epoch):
            yield from batch.tolist()


class GraphDataModule(pl.LightningDataModule):
    """Molecular graphs from a SMILES source, split into disjoint train / val / test by ``seed``.

    Args:
        path: ``.smi``/``.csv``/``.sdf`` file, gzipped or not; None: the embedded MOSES sample.
        smiles_column: CSV column with SMILES (None: detected).
        batch_size, num_workers: DataLoader settings.
        limit: use at most this many molecules (None: all).
        val_fraction: share of molecules held out for validation (at least one when > 0).
        test_fraction: share held out for ``test=true`` (at least one when > 0; 0: no test split,
            and testing is refused).
        seed: seed of the splits.
        vocabulary: fixed atom-type tokens (None: built from the training split, see
            ``min_atom_count``).
        min_atom_count: atom types seen fewer times are left out of a built vocabulary.
        max_atoms: molecules with more heavy atoms are rejected (None: no cap).
        cache_dir: where caches go when the source folder is read-only (None: default).
        featurize_workers: processes for featurization (first run only; then the cache is used).
        bucket_by_size: training batches of similar-size molecules (:class:`SizeBucketSampler`;
            less padding, the same molecules each epoch); False: plain shuffling.
        condition_properties: RDKit properties (``qed``, ``sa``, ``logp``) computed for every
            molecule (once, cached beside the graphs) and batched with it
            (:class:`ConditionedBatch`), for a conditional model (``model.conditions``).
        stereo: keep stereochemistry (tetrahedral centres, double bonds) as labels beside each
            graph (:mod:`medgen.molecules.stereo`), for data sets that carry it; molecules are
            then compared by isomeric canonical SMILES. False: stereo is dropped.
    """

    data_kind: ClassVar[str] = "molecules"  # what it gives (checked against the model's)

    def __init__(
        self,
        *,
        path: str | None = None,
        smiles_column: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        limit: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
        vocabulary: list[str] | None = None,
        min_atom_count: int = 1,
        max_atoms: int | None = None,
        cache_dir: str | None = None,
        featurize_workers: int = 1,
        bucket_by_size: bool = True,
        condition_properties: list[str] | None = None,
        stereo: bool = False,
    ):
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise UserError(
                f"test_fraction must be in [0, 1) and leave training molecules: "
                f"got test_fraction={test_fraction} with val_fraction={val_fraction}"
            )
        self.path, self.smiles_column = path, smiles_column
        self.batch_size, self.num_workers, self.limit = batch_size, num_workers, limit
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.fixed_vocabulary = list(vocabulary) if vocabulary else None
        self.min_atom_count, self.max_atoms = min_atom_count, max_atoms
        self.cache_dir, self.featurize_workers = cache_dir, featurize_workers
        self.bucket_by_size = bucket_by_size
        self.stereo = bool(stereo)
        self.condition_properties = list(condition_properties or [])
        if self.condition_properties:
            from medgen.molecules.api import property_function

            unknown = [n for n in self.condition_properties if property_function(n) is None]
            if unknown:
                raise UserError(f"data.condition_properties: unknown properties {unknown}; "
                                "use qed, sa, logp, ...")  # fmt: skip
        self.condition_values: torch.Tensor | None = None
        self.source: FeaturizedSource | None = None
        self.vocabulary: Vocabulary | None = None
        self.rejects_path: Path | None = None
        self.rejects: list[list[Any]] = []
        self.train_set: GraphDataset | None = None
        self.val_set: GraphDataset | None = None
        self.test_set: GraphDataset | None = None
        self.train_indices: list[int] = []
        self.val_indices: list[int] = []
        self.test_indices: list[int] = []

    # ------------------------------------------------------------------------------------------
    def planned_meta(self) -> dict[str, Any]:
        """What the model must fit, from the settings alone (checked before a run folder is
        made): ``stereo`` and ``condition_properties``."""
        return {"stereo": self.stereo, "condition_properties": list(self.condition_properties)}

    def setup(self, stage: str | None = None) -> None:
        if self.source is None:
            self.source, self._cache = load_source(
                self.path,
                smiles_column=self.smiles_column,
                limit=self.limit,
                cache_dir=self.cache_dir,
                workers=self.featurize_workers,
                stereo=self.stereo,
            )
            if len(self.source) == 0:
                raise UserError(f"no usable molecules in {self.path or EMBEDDED_SAMPLE}")
            if self.condition_properties:
                names = "-".join(self.condition_properties)
                cache = self._cache.with_name(f"{self._cache.name}.props-{names}.npy")
                whole = None
                if self.limit is not None and self.path:
                    whole = cache_file(Path(self.path).expanduser(), None, self.cache_dir,
                                       self.stereo)  # fmt: skip
                    whole = whole.with_name(f"{whole.name}.props-{names}.npy")
                log.info("properties %s of %d molecules (cached in %s)", names,
                         len(self.source), cache)  # fmt: skip
                self.condition_values = property_values(
                    list(self.source.smiles), self.condition_properties,
                    workers=self.featurize_workers, cache=cache, head_of=whole,
                )  # fmt: skip
            self.use_vocabulary(self.fixed_vocabulary)

    def use_vocabulary(self, tokens: Sequence[str] | None) -> None:
        """(Re)build the splits for a vocabulary (None: from the training split); rejects the rest.

        The splits are drawn first (by ``seed``, over molecules within ``max_atoms``: one
        permutation, validation first, then test, the rest trains); a built vocabulary then holds
        the atom types of the training split seen at least ``min_atom_count`` times. Molecules of
        any split with other atom types are rejected.
        """
        src = self.source
        if src is None:
            raise RuntimeError("call setup() first")
        name = self.path or EMBEDDED_SAMPLE
        n_atoms = src.n_atoms()
        lines, sizes = src.lines.tolist(), n_atoms.tolist()
        self.rejects = list(src.rejects)
        fits = []
        for k, size in enumerate(sizes):
            if self.max_atoms and size > self.max_atoms:
                reason = f"{size} heavy atoms > max_atoms={self.max_atoms}"
                self.rejects.append([lines[k], src.smiles[k], reason])
            else:
                fits.append(k)
        gen = torch.Generator().manual_seed(self.seed)
        order = [fits[i] for i in torch.randperm(len(fits), generator=gen).tolist()]
        n_val = _held_out(self.val_fraction, len(order), len(order))
        n_test = _held_out(self.test_fraction, len(order), len(order) - n_val)
        val, test = set(order[:n_val]), set(order[n_val : n_val + n_test])
        train = order[n_val + n_test :]
        mol_of_atom = torch.repeat_interleave(torch.arange(len(src)), n_atoms)
        if tokens is None:
            in_train = torch.zeros(len(src), dtype=torch.bool)
            in_train[torch.tensor(train, dtype=torch.long)] = True
            counts_t = torch.bincount(
                src.atoms.long()[in_train[mol_of_atom]], minlength=len(src.tokens)
            ).tolist()
            counts = Counter(dict(zip(src.tokens, counts_t, strict=True)))
            # a token no Vocabulary accepts (should the featurizer ever let one through) only
            # rejects its molecules, never stops the run
            kept = [
                t for t in src.tokens if counts[t] >= max(1, self.min_atom_count) and _usable(t)
            ]
            if not kept:
                raise UserError(f"no atom type of {name} is common enough for the vocabulary")
            self.vocabulary = Vocabulary(sorted(kept, key=lambda t: (-counts[t], t)))
        else:
            self.vocabulary = Vocabulary(tokens)
        remap = torch.tensor([self.vocabulary.index.get(t, -1) for t in src.tokens])
        bad_atom = (remap[src.atoms.long()] < 0).long()
        unknown = torch.zeros(len(src), dtype=torch.long).index_add_(0, mol_of_atom, bad_atom) > 0
        known = set(self.vocabulary.tokens)
        self.train_indices, self.val_indices, self.test_indices = [], [], []
        for k in fits:
            held_out = k in val or k in test
            if bool(unknown[k]):
                a0, a1 = int(src.atom_ptr[k]), int(src.atom_ptr[k + 1])
                missing = sorted({src.tokens[a] for a in src.atoms[a0:a1].tolist()} - known)
                where = " (built from the training split)" if tokens is None and held_out else ""
                reason = f"atom type(s) not in the vocabulary{where}: {', '.join(missing)}"
                self.rejects.append([lines[k], src.smiles[k], reason])
            elif k in val:
                self.val_indices.append(k)
            else:
                (self.test_indices if k in test else self.train_indices).append(k)
        if not self.train_indices:
            raise UserError(f"no training molecule of {name} fits the vocabulary")
        self.rejects_path = write_rejects(self._cache.with_suffix(".rejects.csv"), self.rejects)
        if self.rejects:
            log.warning(
                "%d rows of %s skipped; reasons and line numbers in %s",
                len(self.rejects),
                name,
                self.rejects_path,
            )
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.is_global_zero and trainer.default_root_dir:
            write_rejects(Path(trainer.default_root_dir) / "rejects.csv", self.rejects)
        values = self.condition_values
        self.train_set = GraphDataset(src, self.train_indices, remap, values, self.stereo)
        self.val_set = GraphDataset(src, self.val_indices, remap, values, self.stereo)
        self.test_set = GraphDataset(src, self.test_indices, remap, values, self.stereo)
        used = self.train_indices + self.val_indices + self.test_indices
        self.max_atoms_seen = int(n_atoms[used].max())
        log.info(
            "molecules: %d train, %d val, %d test, vocabulary %s, up to %d heavy atoms",
            len(self.train_set), len(self.val_set), len(self.test_set),
            self.vocabulary.tokens, self.max_atoms_seen,
        )  # fmt: skip

    def train_smiles(self) -> list[str]:
        """Canonical SMILES (no stereo; isomeric with ``stereo``) of the training molecules."""
        return [self._source().smiles[k] for k in self.train_indices]

    def val_smiles(self) -> list[str]:
        """Canonical SMILES (isomeric with ``stereo``) of the validation molecules, in order."""
        return [self._source().smiles[k] for k in self.val_indices]

    def property_values(self, name: str, split: Split = "train") -> torch.Tensor | None:
        """A numeric column of the source for a split, ``(M,)`` float32, or None if absent."""
        values = self._source().properties.get(name)
        if values is None:
            return None
        idx = {"train": self.train_indices, "val": self.val_indices, "test": self.test_indices}
        if split not in idx:
            raise UserError(f"split={split!r} is not one of {sorted(idx)}")
        return values[torch.tensor(idx[split], dtype=torch.long)]

    # ------------------------------------------------------------------------------------------
    def _source(self) -> FeaturizedSource:
        if self.source is None:
            raise RuntimeError("GraphDataModule: call setup() first")
        return self.source

    def _loader(self, dataset: GraphDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("GraphDataModule: call setup() first")
        sampler = None
        if shuffle and self.bucket_by_size:
            sizes = self._source().n_atoms()[torch.tensor(dataset.indices, dtype=torch.long)]
            sampler = SizeBucketSampler(sizes, self.batch_size, seed=self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_items,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The held-out test split (never trained or validated on)."""
        if not self.test_set:
            raise UserError(
                f"data.test_fraction={self.test_fraction}: no test molecules to test on; "
                "set data.test_fraction > 0 (e.g. 0.1) and retrain, or test=false"
            )
        return self._loader(self.test_set, shuffle=False)

    def transfer_batch_to_device(
        self, batch: GraphBatch, device, dataloader_idx: int
    ) -> GraphBatch:
        return batch.to(device)


def _held_out(fraction: float, total: int, available: int) -> int:
    """Molecules a split of ``fraction`` of ``total`` takes from the ``available`` ones: at least
    one when > 0, and never the last one (training keeps at least one)."""
    if fraction <= 0 or available <= 1:
        return 0
    return min(available - 1, max(1, round(fraction * total)))


def write_rejects(path: str | os.PathLike, rejects: Sequence[Sequence[Any]]) -> Path:
    """Write ``line, smiles, reason`` rows (sorted by line) as CSV, atomically."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["line", "smiles", "reason"])
    rows: list[Sequence[Any]] = sorted(rejects, key=lambda row: int(row[0]))
    writer.writerows(rows)
    return atomic_write_text(path, out.getvalue())


def _usable(token: str) -> bool:
    """Whether ``token`` is an atom type a :class:`Vocabulary` accepts."""
    try:
        Vocabulary([token])
    except ValueError:
        return False
    return True
