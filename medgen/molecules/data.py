"""SMILES sources -> cached molecular graphs -> :class:`GraphDataModule`.

Sources are read with :func:`medgen.chem.io.read_molecules`: ``.smi``, ``.csv``/``.tsv`` (SMILES
column named or detected; numeric columns are kept as properties), ``.sdf``, gzipped or not. With
``path=None`` the embedded sample of MOSES train is used (see ``resources/README.md``).

Featurized graphs are cached with ``torch.save`` next to the source
(``<source>.graphs-<key>.pt``), or in ``cache_dir`` (default ``$MEDGEN_CACHE_DIR`` or
``~/.cache/medgen/graphs``) when the source's folder is read-only or inside the medgen package.
The key covers the file's path, size and mtime, the featurizer version and ``limit``.

Rows RDKit cannot parse, that a graph cannot hold (several fragments), with atom types outside the
vocabulary or more heavy atoms than ``max_atoms`` are skipped and listed in a rejects CSV
(``line, smiles, reason``; for SDF ``line`` is the record number) next to the cache, and copied to
the run dir when training. One bad row never stops a run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from medgen.molecules.graph import (
    FeaturizeError,
    GraphBatch,
    MolGraph,
    Vocabulary,
    collate_graphs,
    smiles_to_tokens,
)
from medgen.utils.atomic import atomic_write_text
from medgen.utils.logging import get_logger

log = get_logger(__name__)

FEATURIZER_VERSION = 1
EMBEDDED_SAMPLE = Path(__file__).parent / "resources" / "moses_sample.smi"
_CHUNK = 4096


def default_cache_dir() -> Path:
    """``$MEDGEN_CACHE_DIR/graphs`` or ``~/.cache/medgen/graphs``."""
    root = os.environ.get("MEDGEN_CACHE_DIR") or Path.home() / ".cache" / "medgen"
    return Path(root) / "graphs"


@dataclass
class FeaturizedSource:
    """The graphs of one source file; per-file token list, flat tensors.

    atoms: ``(total_atoms,)`` int16 indices into ``tokens``; ``atom_ptr``: ``(M + 1,)`` offsets.
    bonds: ``(total_bonds, 3)`` int16 rows ``(i, j, order)``; ``bond_ptr``: ``(M + 1,)`` offsets.
    lines: ``(M,)`` line (record) numbers in the source; smiles: canonical SMILES, no stereo.
    properties: numeric columns of the source, ``(M,)`` float32 each (NaN where missing).
    rejects: ``[line, smiles, reason]`` rows.
    """

    tokens: list[str]
    atoms: torch.Tensor
    atom_ptr: torch.Tensor
    bonds: torch.Tensor
    bond_ptr: torch.Tensor
    lines: torch.Tensor
    smiles: list[str]
    properties: dict[str, torch.Tensor] = field(default_factory=dict)
    rejects: list[list[Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.smiles)

    def graph(self, k: int, remap: torch.Tensor) -> MolGraph:
        """Molecule ``k`` as a :class:`MolGraph`, file token indices mapped through ``remap``."""
        a0, a1 = int(self.atom_ptr[k]), int(self.atom_ptr[k + 1])
        b0, b1 = int(self.bond_ptr[k]), int(self.bond_ptr[k + 1])
        return MolGraph(remap[self.atoms[a0:a1].long()], self.bonds[b0:b1].long())

    def n_atoms(self) -> torch.Tensor:
        return self.atom_ptr[1:] - self.atom_ptr[:-1]

    def token_counts(self) -> Counter:
        counts = torch.bincount(self.atoms.long(), minlength=len(self.tokens)).tolist()
        return Counter(dict(zip(self.tokens, counts, strict=True)))


def _featurize_rows(rows: list[tuple[int, str | None]]) -> list[tuple]:
    """Worker: ``(line, tokens, bonds, canonical smiles)`` or ``(line, None, smiles, reason)``."""
    from rdkit import Chem

    out = []
    for line, smi in rows:
        if smi is None:
            out.append((line, None, "", "no SMILES / unreadable record"))
            continue
        try:
            tokens, bonds = smiles_to_tokens(smi)
            canon = Chem.MolToSmiles(Chem.MolFromSmiles(smi), isomericSmiles=False)
            out.append((line, tokens, bonds, canon))
        except FeaturizeError as err:
            out.append((line, None, smi, str(err)))
    return out


def featurize_source(
    path: str | os.PathLike,
    *,
    smiles_column: str | None = None,
    limit: int | None = None,
    workers: int = 1,
) -> FeaturizedSource:
    """Read and featurize a molecule file (no caching); stops after ``limit`` usable molecules."""
    from medgen.chem.io import read_molecules

    tokens: dict[str, int] = {}
    atoms, bonds, atom_ptr, bond_ptr = [], [], [0], [0]
    lines, smiles, rejects = [], [], []
    props: dict[str, list[float]] = {}
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for frame in read_molecules(path, smiles_column=smiles_column, chunk_size=_CHUNK * workers):
            extra = [c for c in frame.columns if c not in ("line", "smiles", "name")]
            numeric = {c: _to_float(frame[c]) for c in extra}
            numeric = {c: v for c, v in numeric.items() if v is not None}
            rows = list(zip(frame["line"].tolist(), frame["smiles"].tolist(), strict=True))
            step = _CHUNK if limit is None else max(8, min(_CHUNK, 2 * (limit - len(smiles))))
            chunks = [rows[i : i + step] for i in range(0, len(rows), step)]
            # map() is lazy without a pool, so featurizing stops soon after `limit` molecules
            results = pool.map(_featurize_rows, chunks) if pool else map(_featurize_rows, chunks)
            row_of_line = {line: r for r, line in enumerate(frame["line"].tolist())}
            for result in results:
                for line, toks, bnds, text in result:
                    if limit is not None and len(smiles) >= limit:
                        break
                    if toks is None:
                        rejects.append([int(line), bnds, text])
                        continue
                    atoms.extend(tokens.setdefault(t, len(tokens)) for t in toks)
                    bonds.extend(bnds)
                    atom_ptr.append(len(atoms))
                    bond_ptr.append(len(bonds))
                    lines.append(int(line))
                    smiles.append(text)
                    for c, values in numeric.items():
                        props.setdefault(c, [float("nan")] * (len(smiles) - 1))
                        props[c].append(values[row_of_line[line]])
                    for c in props:
                        if c not in numeric:
                            props[c].append(float("nan"))
                if limit is not None and len(smiles) >= limit:
                    break
            if limit is not None and len(smiles) >= limit:
                break
    finally:
        if pool:
            pool.shutdown()
    return FeaturizedSource(
        tokens=list(tokens),
        atoms=torch.tensor(atoms, dtype=torch.int16),
        atom_ptr=torch.tensor(atom_ptr, dtype=torch.long),
        bonds=torch.tensor(bonds, dtype=torch.int16).reshape(-1, 3),
        bond_ptr=torch.tensor(bond_ptr, dtype=torch.long),
        lines=torch.tensor(lines, dtype=torch.long),
        smiles=smiles,
        properties={c: torch.tensor(v, dtype=torch.float32) for c, v in props.items()},
        rejects=rejects,
    )


def _to_float(column) -> list[float] | None:
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce")
    if values.notna().sum() == 0:
        return None
    return values.astype(float).tolist()


def cache_file(path: Path, limit: int | None, cache_dir: str | os.PathLike | None) -> Path:
    """Where the featurized graphs of ``path`` live (see module docstring)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|v{FEATURIZER_VERSION}|{limit}"
    name = f"{path.name}.graphs-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    inside_package = Path(__file__).resolve().parents[1] in path.resolve().parents
    if not inside_package and os.access(path.parent, os.W_OK):
        return path.parent / name
    return Path(cache_dir) / name if cache_dir else default_cache_dir() / name


def load_source(
    path: str | os.PathLike | None = None,
    *,
    smiles_column: str | None = None,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
) -> tuple[FeaturizedSource, Path]:
    """Featurized graphs of ``path`` (None: the embedded sample), from the cache when present."""
    source = Path(path).expanduser() if path else EMBEDDED_SAMPLE
    if not source.is_file():
        raise FileNotFoundError(f"molecule file not found: {source}")
    target = cache_file(source, limit, cache_dir)
    if target.is_file():
        try:
            data = torch.load(target, weights_only=True)
            log.info("graphs of %s from cache %s", source, target)
            return FeaturizedSource(**data), target
        except Exception as err:  # noqa: BLE001 - a stale or corrupt cache is rebuilt
            log.warning("ignoring unreadable graph cache %s: %s", target, err)
    log.info("featurizing %s (limit=%s, workers=%d)", source, limit, workers)
    feats = featurize_source(source, smiles_column=smiles_column, limit=limit, workers=workers)
    buffer = io.BytesIO()
    torch.save(feats.__dict__, buffer)
    try:
        from medgen.utils.atomic import atomic_write_bytes

        atomic_write_bytes(target, buffer.getvalue())
    except OSError as err:  # read-only after all: fall back to the cache dir
        target = Path(cache_dir) if cache_dir else default_cache_dir()
        target = target / cache_file(source, limit, target).name
        atomic_write_bytes(target, buffer.getvalue())
        log.info("source folder not writable (%s); cached in %s", err, target)
    log.info(
        "%s: %d molecules, %d rejected; cache %s", source, len(feats), len(feats.rejects), target
    )
    return feats, target


def write_rejects(path: str | os.PathLike, rejects: Sequence[Sequence[Any]]) -> Path:
    """Write ``line, smiles, reason`` rows (sorted by line) as CSV, atomically."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["line", "smiles", "reason"])
    writer.writerows(sorted(rejects, key=lambda r: r[0]))
    return atomic_write_text(path, out.getvalue())


class GraphDataset(Dataset):
    """Molecules ``indices`` of a :class:`FeaturizedSource`, as :class:`MolGraph` items."""

    def __init__(self, source: FeaturizedSource, indices: Sequence[int], remap: torch.Tensor):
        self.source, self.indices, self.remap = source, list(indices), remap

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> MolGraph:
        return self.source.graph(self.indices[i], self.remap)


class GraphDataModule(pl.LightningDataModule):
    """Molecular graphs from a SMILES source, split into train / val by ``seed``.

    Args:
        path: ``.smi``/``.csv``/``.sdf`` file, gzipped or not; None: the embedded MOSES sample.
        smiles_column: CSV column with SMILES (None: detected).
        batch_size, num_workers: DataLoader settings.
        limit: use at most this many molecules (None: all).
        val_fraction: share of molecules held out for validation (at least one when > 0).
        seed: seed of the train / val split.
        vocabulary: fixed atom-type tokens (None: built from the data, see ``min_atom_count``).
        min_atom_count: atom types seen fewer times are left out of a built vocabulary.
        max_atoms: molecules with more heavy atoms are rejected (None: no cap).
        cache_dir: where caches go when the source folder is read-only (None: default).
        featurize_workers: processes for featurization (first run only; then the cache is used).
    """

    def __init__(
        self,
        *,
        path: str | None = None,
        smiles_column: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        limit: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        vocabulary: list[str] | None = None,
        min_atom_count: int = 1,
        max_atoms: int | None = None,
        cache_dir: str | None = None,
        featurize_workers: int = 1,
    ):
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.path, self.smiles_column = path, smiles_column
        self.batch_size, self.num_workers, self.limit = batch_size, num_workers, limit
        self.val_fraction, self.seed = val_fraction, seed
        self.fixed_vocabulary = list(vocabulary) if vocabulary else None
        self.min_atom_count, self.max_atoms = min_atom_count, max_atoms
        self.cache_dir, self.featurize_workers = cache_dir, featurize_workers
        self.source: FeaturizedSource | None = None
        self.vocabulary: Vocabulary | None = None
        self.rejects_path: Path | None = None
        self.rejects: list[list[Any]] = []
        self.train_set: GraphDataset | None = None
        self.val_set: GraphDataset | None = None

    # ------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.source is None:
            self.source, self._cache = load_source(
                self.path,
                smiles_column=self.smiles_column,
                limit=self.limit,
                cache_dir=self.cache_dir,
                workers=self.featurize_workers,
            )
            if len(self.source) == 0:
                raise ValueError(f"no usable molecules in {self.path or EMBEDDED_SAMPLE}")
            self.use_vocabulary(self.fixed_vocabulary)

    def use_vocabulary(self, tokens: Sequence[str] | None) -> None:
        """(Re)build the splits for a vocabulary (None: from the data); rejects the rest."""
        src = self.source
        if src is None:
            raise RuntimeError("call setup() first")
        if tokens is None:
            counts = src.token_counts()
            kept = [t for t in src.tokens if counts[t] >= self.min_atom_count]
            self.vocabulary = Vocabulary(sorted(kept, key=lambda t: (-counts[t], t)))
        else:
            self.vocabulary = Vocabulary(tokens)
        remap = torch.tensor([self.vocabulary.index.get(t, -1) for t in src.tokens])
        n_atoms = src.n_atoms()
        bad_atom = (remap[src.atoms.long()] < 0).long()
        per_mol = torch.zeros(len(src), dtype=torch.long).index_add_(
            0, torch.repeat_interleave(torch.arange(len(src)), n_atoms), bad_atom
        )
        unknown = per_mol > 0
        too_big = n_atoms > self.max_atoms if self.max_atoms else torch.zeros_like(unknown)
        self.rejects = list(src.rejects)
        keep = []
        lines, sizes = src.lines.tolist(), n_atoms.tolist()
        for k, (is_unknown, is_big) in enumerate(
            zip(unknown.tolist(), too_big.tolist(), strict=True)
        ):
            if is_unknown:
                a0, a1 = int(src.atom_ptr[k]), int(src.atom_ptr[k + 1])
                missing = sorted(
                    {src.tokens[a] for a in src.atoms[a0:a1].tolist()} - set(self.vocabulary.tokens)
                )
                reason = f"atom type(s) not in the vocabulary: {', '.join(missing)}"
                self.rejects.append([lines[k], src.smiles[k], reason])
            elif is_big:
                reason = f"{sizes[k]} heavy atoms > max_atoms={self.max_atoms}"
                self.rejects.append([lines[k], src.smiles[k], reason])
            else:
                keep.append(k)
        if not keep:
            raise ValueError(f"no molecule of {self.path or EMBEDDED_SAMPLE} fits the vocabulary")
        self.rejects_path = write_rejects(self._cache.with_suffix(".rejects.csv"), self.rejects)
        if self.rejects:
            log.warning(
                "%d rows of %s skipped; reasons and line numbers in %s",
                len(self.rejects),
                self.path or EMBEDDED_SAMPLE,
                self.rejects_path,
            )
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.is_global_zero and trainer.default_root_dir:
            write_rejects(Path(trainer.default_root_dir) / "rejects.csv", self.rejects)
        gen = torch.Generator().manual_seed(self.seed)
        order = [keep[i] for i in torch.randperm(len(keep), generator=gen).tolist()]
        n_val = 0
        if self.val_fraction > 0 and len(order) > 1:
            n_val = max(1, round(self.val_fraction * len(order)))
        self.val_indices, self.train_indices = sorted(order[:n_val]), sorted(order[n_val:])
        self.train_set = GraphDataset(src, self.train_indices, remap)
        self.val_set = GraphDataset(src, self.val_indices, remap)
        self.max_atoms_seen = int(n_atoms[keep].max())
        log.info(
            "molecules: %d train, %d val, vocabulary %s, up to %d heavy atoms",
            len(self.train_set),
            len(self.val_set),
            self.vocabulary.tokens,
            self.max_atoms_seen,
        )

    def train_smiles(self) -> list[str]:
        """Canonical SMILES (no stereo) of the training molecules (for novelty)."""
        return [self.source.smiles[k] for k in self.train_indices]

    def property_values(self, name: str, split: str = "train") -> torch.Tensor | None:
        """A numeric column of the source for a split, ``(M,)`` float32, or None if absent."""
        values = self.source.properties.get(name)
        if values is None:
            return None
        idx = self.train_indices if split == "train" else self.val_indices
        return values[torch.tensor(idx, dtype=torch.long)]

    # ------------------------------------------------------------------------------------------
    def _loader(self, dataset: GraphDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_graphs,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def transfer_batch_to_device(
        self, batch: GraphBatch, device, dataloader_idx: int
    ) -> GraphBatch:
        return batch.to(device)
