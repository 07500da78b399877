"""SMILES sources -> featurized molecular graphs, cached in medgen's cache folder.

Sources are read with :func:`medgen.chem.io.read_molecules`: ``.smi``, ``.csv``/``.tsv`` (SMILES
column named or detected; numeric columns are kept as properties), ``.sdf``, gzipped or not. With
``path=None`` the embedded sample of MOSES train is used (see ``resources/README.md``).

Featurized graphs are cached with ``torch.save`` as ``<cache_dir>/<source name>.graphs-<key>.pt``
(``cache_dir``: ``paths.cache_dir``/graphs under ``medgen train``; default
``$MEDGEN_CACHE_DIR/graphs`` or ``~/.cache/medgen/graphs``), never beside the source, whose folder
may be read-only.
The key covers the file's path, size and mtime, the featurizer version and ``limit``; a run with
``limit`` takes its molecules from a cache of the whole file when there is one (the same
molecules, rejects and tokens as featurizing the first ``limit``; :meth:`FeaturizedSource.head`).

Rows RDKit cannot parse or a graph cannot hold (several fragments, dummy atoms, bonds that stay
aromatic after kekulization, or any other error while featurizing) become reject rows
(``line, smiles, reason``; for SDF ``line`` is the record number). One bad row never stops a run.
The stored SMILES is the canonical SMILES (no stereo) of the *standardized graph*, the same string
a decode of that graph gives, so novelty and reconstruction compare like with like. With
``stereo=True`` every molecule also carries stereo labels (:mod:`medgen.molecules.stereo`) and the
stored SMILES is the isomeric one of the graph with its labels (stereo RDKit cannot name as a
tetrahedral centre or a double bond is dropped, never the molecule).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medgen.molecules.graph import MolGraph
from medgen.utils.cache import cache_folder
from medgen.utils.logging import get_logger

log = get_logger(__name__)

# 2: standardized-graph SMILES, dummy atoms and non-kekulizable bonds rejected, per-row errors
FEATURIZER_VERSION = 2
EMBEDDED_SAMPLE = Path(__file__).parent / "resources" / "moses_sample.smi"
_CHUNK = 4096
PROGRESS_EVERY_S = 30.0  # a progress line while featurizing (hundreds of thousands of rows)


def default_cache_dir() -> Path:
    """``$MEDGEN_CACHE_DIR/graphs`` or ``~/.cache/medgen/graphs`` (:mod:`medgen.utils.cache`)."""
    return cache_folder("graphs")


@dataclass
class FeaturizedSource:
    """The graphs of one source file; per-file token list, flat tensors.

    atoms: ``(total_atoms,)`` int16 indices into ``tokens``; ``atom_ptr``: ``(M + 1,)`` offsets.
    bonds: ``(total_bonds, 3)`` int16 rows ``(i, j, order)``; ``bond_ptr``: ``(M + 1,)`` offsets.
    lines: ``(M,)`` line (record) numbers in the source; smiles: canonical SMILES, no stereo.
    properties: numeric columns of the source, ``(M,)`` float32 each (NaN where missing).
    rejects: ``[line, smiles, reason]`` rows.
    chirality: ``(total_atoms,)`` int8 stereo labels per atom, ``bond_stereo``: ``(total_bonds,)``
    int8 per bond (both None without stereo; see :mod:`medgen.molecules.stereo`).
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
    chirality: torch.Tensor | None = None
    bond_stereo: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.smiles)

    def graph(self, k: int, remap: torch.Tensor) -> MolGraph:
        """Molecule ``k`` as a :class:`MolGraph`, file token indices mapped through ``remap``."""
        a0, a1 = int(self.atom_ptr[k]), int(self.atom_ptr[k + 1])
        b0, b1 = int(self.bond_ptr[k]), int(self.bond_ptr[k + 1])
        return MolGraph(remap[self.atoms[a0:a1].long()], self.bonds[b0:b1].long())

    def stereo(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Molecule ``k``'s labels: ``chirality (N,)``, candidate bonds ``(E', 2)`` rows
        ``(i, j)`` and their labels ``(E',)`` (:func:`medgen.molecules.stereo.collate_stereo`)."""
        if self.chirality is None or self.bond_stereo is None:
            raise ValueError("these graphs were featurized without stereo (data.stereo=false)")
        a0, a1 = int(self.atom_ptr[k]), int(self.atom_ptr[k + 1])
        b0, b1 = int(self.bond_ptr[k]), int(self.bond_ptr[k + 1])
        labels = self.bond_stereo[b0:b1].long()
        keep = labels >= 0
        return self.chirality[a0:a1].long(), self.bonds[b0:b1, :2].long()[keep], labels[keep]

    def head(self, limit: int) -> FeaturizedSource:
        """The first ``limit`` molecules, exactly as featurizing with ``limit`` gives them: the
        rejects met before the last of them, and the tokens they use in order of appearance."""
        if limit >= len(self):
            return self
        a_end, b_end = int(self.atom_ptr[limit]), int(self.bond_ptr[limit])
        last_line = int(self.lines[limit - 1]) if limit > 0 else -1
        used = torch.unique(self.atoms[:a_end].long())  # sorted = order of first appearance
        remap = torch.full((len(self.tokens),), -1, dtype=torch.long)
        remap[used] = torch.arange(len(used))
        return FeaturizedSource(
            tokens=[self.tokens[i] for i in used.tolist()],
            atoms=remap[self.atoms[:a_end].long()].to(self.atoms.dtype),
            atom_ptr=self.atom_ptr[: limit + 1].clone(),
            bonds=self.bonds[:b_end].clone(),
            bond_ptr=self.bond_ptr[: limit + 1].clone(),
            lines=self.lines[:limit].clone(),
            smiles=self.smiles[:limit],
            properties={c: v[:limit].clone() for c, v in self.properties.items()},
            rejects=[r for r in self.rejects if int(r[0]) < last_line],
            chirality=None if self.chirality is None else self.chirality[:a_end].clone(),
            bond_stereo=None if self.bond_stereo is None else self.bond_stereo[:b_end].clone(),
        )

    def n_atoms(self) -> torch.Tensor:
        return self.atom_ptr[1:] - self.atom_ptr[:-1]

    def token_counts(self) -> Counter:
        counts = torch.bincount(self.atoms.long(), minlength=len(self.tokens)).tolist()
        return Counter(dict(zip(self.tokens, counts, strict=True)))


def _featurize_rows(rows: list[tuple[int, str | None]], stereo: bool = False) -> list[tuple]:
    """Worker: ``(line, tokens, bonds, canonical smiles, labels)`` or ``(line, None, smiles,
    reason, None)``; ``labels`` is ``(chirality, bond labels)`` with ``stereo``, else None.

    The SMILES kept is that of the standardized graph (rebuilt from tokens and bonds, with its
    stereo labels). Any error on a row, expected or not, becomes a reject row with its reason.
    """
    from medgen.molecules.graph import (
        FeaturizeError,
        _build_mol,
        atom_type_of_token,
        mol_to_smiles,
        smiles_to_tokens,
    )
    from medgen.molecules.stereo import smiles_with_stereo

    out: list[tuple[Any, ...]] = []
    for line, smi in rows:
        if smi is None or not str(smi).strip():
            out.append((line, None, "" if smi is None else smi, "no SMILES / unreadable record",
                        None))  # fmt: skip
            continue
        try:
            if stereo:
                tokens, bonds, chirality, on_bonds, canon = smiles_with_stereo(smi)
                out.append((line, tokens, bonds, canon, (chirality, on_bonds)))
                continue
            tokens, bonds = smiles_to_tokens(smi)
            types = [atom_type_of_token(t) for t in tokens]
            canon = mol_to_smiles(_build_mol(types, bonds))
            out.append((line, tokens, bonds, canon, None))
        except FeaturizeError as err:
            out.append((line, None, smi, str(err), None))
        except Exception as err:  # noqa: BLE001 - one bad row never stops a run
            out.append((line, None, smi, f"{type(err).__name__}: {err}", None))
    return out


def featurize_source(
    path: str | os.PathLike,
    *,
    smiles_column: str | None = None,
    limit: int | None = None,
    workers: int = 1,
    stereo: bool = False,
) -> FeaturizedSource:
    """Read and featurize a molecule file (no caching); stops after ``limit`` usable molecules;
    ``stereo``: keep stereo labels (:mod:`medgen.molecules.stereo`)."""
    import functools

    from medgen.chem.io import read_molecules

    tokens: dict[str, int] = {}
    atoms: list[int] = []
    bonds: list[tuple[int, int, int]] = []
    atom_ptr, bond_ptr = [0], [0]
    lines: list[int] = []
    smiles: list[str] = []
    rejects: list[list[Any]] = []
    props: dict[str, list[float]] = {}
    chirality: list[int] = []
    bond_stereo: list[int] = []
    work = functools.partial(_featurize_rows, stereo=stereo)
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    began = last_log = time.perf_counter()
    try:
        for frame in read_molecules(path, smiles_column=smiles_column, chunk_size=_CHUNK * workers):
            extra = [c for c in frame.columns if c not in ("line", "smiles", "name")]
            floats = {c: _to_float(frame[c]) for c in extra}
            numeric = {c: v for c, v in floats.items() if v is not None}
            rows = list(zip(frame["line"].tolist(), frame["smiles"].tolist(), strict=True))
            step = _CHUNK if limit is None else max(8, min(_CHUNK, 2 * (limit - len(smiles))))
            chunks = [rows[i : i + step] for i in range(0, len(rows), step)]
            # map() is lazy without a pool, so featurizing stops soon after `limit` molecules
            results = pool.map(work, chunks) if pool else map(work, chunks)
            row_of_line = {line: r for r, line in enumerate(frame["line"].tolist())}
            for result in results:
                for line, toks, bnds, text, labels in result:
                    if limit is not None and len(smiles) >= limit:
                        break
                    if toks is None:
                        rejects.append([int(line), bnds, text])
                        continue
                    atoms.extend(tokens.setdefault(t, len(tokens)) for t in toks)
                    bonds.extend(bnds)
                    if labels is not None:
                        chirality.extend(labels[0])
                        bond_stereo.extend(labels[1])
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
            if time.perf_counter() - last_log >= PROGRESS_EVERY_S:  # long sources: show progress
                last_log = time.perf_counter()
                log.info("featurizing %s: %s molecules (%s rejected), %.0f rows/s",
                         Path(path).name, f"{len(smiles):,}", f"{len(rejects):,}",
                         (len(smiles) + len(rejects)) / (last_log - began))  # fmt: skip
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
        chirality=torch.tensor(chirality, dtype=torch.int8) if stereo else None,
        bond_stereo=torch.tensor(bond_stereo, dtype=torch.int8) if stereo else None,
    )


def _to_float(column) -> list[float] | None:
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce")
    if values.notna().sum() == 0:
        return None
    return values.astype(float).tolist()


def cache_file(
    path: Path, limit: int | None, cache_dir: str | os.PathLike | None, stereo: bool = False
) -> Path:
    """Where the featurized graphs of ``path`` live (see module docstring)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|v{FEATURIZER_VERSION}|{limit}"
    # without stereo: the keys of caches written before the option; 2: ties ordered by chirality
    key += "|stereo2" if stereo else ""
    name = f"{path.name}.graphs-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    # never beside the source: a data folder may be read-only, shared or under version control
    return cache_folder("graphs", folder=cache_dir) / name


def load_source(
    path: str | os.PathLike | None = None,
    *,
    smiles_column: str | None = None,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
    stereo: bool = False,
) -> tuple[FeaturizedSource, Path]:
    """Featurized graphs of ``path`` (None: the embedded sample), from the cache when present;
    ``stereo``: with stereo labels (a cache of its own)."""
    source = Path(path).expanduser() if path else EMBEDDED_SAMPLE
    if not source.is_file():
        raise FileNotFoundError(f"molecule file not found: {source}")
    target = cache_file(source, limit, cache_dir, stereo)
    cached = _read_cache(target)
    if cached is not None:
        log.info("graphs of %s from cache %s", source, target)
        return cached, target
    whole = _read_cache(cache_file(source, None, cache_dir, stereo)) if limit is not None else None
    # the first `limit` molecules of a cache of the whole file
    if whole is not None and limit is not None:
        feats = whole.head(limit)
        log.info("graphs of the first %d molecules of %s from the cache of the whole file",
                 len(feats), source)  # fmt: skip
    else:
        log.info("featurizing %s (limit=%s, workers=%d)", source, limit, workers)
        feats = featurize_source(
            source, smiles_column=smiles_column, limit=limit, workers=workers, stereo=stereo
        )
    buffer = io.BytesIO()
    torch.save(feats.__dict__, buffer)
    try:
        from medgen.utils.atomic import atomic_write_bytes

        atomic_write_bytes(target, buffer.getvalue())
    except OSError as err:  # read-only after all: fall back to the cache dir
        target = Path(cache_dir) if cache_dir else default_cache_dir()
        target = target / cache_file(source, limit, target, stereo).name
        atomic_write_bytes(target, buffer.getvalue())
        log.info("source folder not writable (%s); cached in %s", err, target)
    log.info(
        "%s: %d molecules, %d rejected; cache %s", source, len(feats), len(feats.rejects), target
    )
    return feats, target


def _read_cache(path: Path) -> FeaturizedSource | None:
    """A graph cache's contents, or None when it is absent or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    try:  # weights_only: a planted pickle in the cache cannot run code, it is only rebuilt
        return FeaturizedSource(**torch.load(path, weights_only=True))
    except Exception as err:  # noqa: BLE001 - a stale, corrupt or foreign cache is rebuilt
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        reason = f"needs pickled code ({found.group(1)})" if found else str(err).strip()
        log.warning("ignoring unreadable graph cache %s (rebuilding it): %s", path, reason)
        return None
