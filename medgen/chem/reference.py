"""Reference statistics for the distribution metrics: MOSES's precomputed ``*_stats.npz``, or
statistics computed once from any SMILES file and cached as a pickle-free ``.npz``.

medgen never unpickles a data file. MOSES ships its statistics as a pickled dict: ``medgen data
moses`` checks those files' sha256 against pinned values and converts them once
(:func:`medgen.datasets.convert_moses_stats`, with an unpickler that rebuilds only numpy arrays
and ``Counter``) into the plain-array layout of :func:`save_stats`, which every later run loads
with ``allow_pickle=False``.

A :class:`ReferenceStats` holds what each metric compares against: ChemNet mean/covariance (FCD),
Morgan fingerprints (SNN), BRICS fragment and Bemis–Murcko scaffold counts (Frag, Scaf), and
logP/SA/QED/weight values (MOSES's Wasserstein-1 distances); optionally GuacaMol KL descriptors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen.chem.mol import canonical_smiles, parse_smiles
from medgen.chem.similarity import FingerprintIndex
from medgen.errors import InputFileError, MissingFileError

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger(__name__)

#: MOSES's property distributions (name -> value), compared with the Wasserstein-1 distance
PROPERTY_NAMES = ("logP", "SA", "QED", "weight")
#: GuacaMol KL-divergence descriptors (RDKit descriptor names): 4 continuous, then 5 discrete
KL_DESCRIPTORS = (
    "BertzCT", "MolLogP", "MolWt", "TPSA",
    "NumHAcceptors", "NumHDonors", "NumRotatableBonds", "NumAliphaticRings", "NumAromaticRings",
)  # fmt: skip
KL_CONTINUOUS = 4
STATS_VERSION = 1
#: keys every file written by :func:`save_stats` holds
_STATS_KEYS = (
    "version", "name", "fcd_mu", "fcd_sigma", "fps",
    "frag_keys", "frag_counts", "scaf_keys", "scaf_counts",
)  # fmt: skip
#: suffix of MOSES statistics converted by ``medgen data moses``: ``test_stats.plain.npz``
PLAIN_SUFFIX = ".plain.npz"
_CACHE_HINT = "; delete this cache file to recompute it"


@dataclass
class ReferenceStats:
    """Statistics of a reference set. Shapes: ``fcd_mu (512,)``, ``fcd_sigma (512, 512)``,
    ``fps (N, 1024)`` uint8, ``kl_descriptors (M, 9)``, ``kl_internal_similarity (M,)``."""

    name: str
    fcd_mu: np.ndarray
    fcd_sigma: np.ndarray
    fps: np.ndarray
    fragments: dict[str, int]
    scaffolds: dict[str, int]
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    kl_descriptors: np.ndarray | None = None
    kl_internal_similarity: np.ndarray | None = None
    #: where :func:`reference_index` caches the prepared fingerprints (None: memory only)
    cache_dir: Path | None = None
    _index: Any = field(default=None, repr=False, compare=False)


# --------------------------------------------------------------------------------------------
# per-molecule features (run in worker processes over chunks)


def compute_scaffold(mol, min_rings: int = 2) -> str | None:
    """MOSES Scaf key: the Bemis–Murcko scaffold SMILES, or None if it has < ``min_rings`` rings."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    try:
        scaffold = MurckoScaffold.GetScaffoldForMol(mol)
    except (ValueError, RuntimeError):
        return None
    text = Chem.MolToSmiles(scaffold)
    if not text or scaffold.GetRingInfo().NumRings() < min_rings:
        return None
    return text


def brics_fragments(mol) -> list[str]:
    """SMILES of the fragments left after cutting ``mol`` at its BRICS bonds (MOSES Frag keys)."""
    from rdkit import Chem

    return Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split(".")


def molecule_features(smiles: Sequence[str], with_kl: bool = False) -> dict[str, Any]:
    """Everything the metrics need from valid SMILES: packed fingerprints, fragments, scaffolds,
    MOSES filter flags, property values and (``with_kl``) GuacaMol descriptors/fingerprints."""
    parsed = [parse_smiles(s) for s in smiles]
    bad = [s for s, m in zip(smiles, parsed, strict=True) if m is None]
    if bad:
        raise ValueError(f"molecule_features needs valid SMILES; got {bad[0]!r}")
    mols = [m for m in parsed if m is not None]  # all of them (checked above)
    out = mol_features(mols)
    if with_kl:
        out |= _kl_of_mols(mols)
    return out


def mol_features(mols: Sequence, dualuse: bool = False) -> dict[str, Any]:
    """:func:`molecule_features` of sanitized RDKit molecules (without the GuacaMol part); with
    ``dualuse``, the :data:`medgen.chem.dualuse.COLUMN` values too (``dualuse``).

    One pass per molecule; what two metrics both need (logP for the logP row and QED, the
    pattern fingerprint that screens QED's and the dual-use alerts) is computed once."""
    from rdkit.Chem import Descriptors, Crippen  # noqa: I001

    from medgen.chem.alerts import moses_filters_pass
    from medgen.chem.dualuse import dualuse_alerts
    from medgen.chem.patterns import pattern_words
    from medgen.chem.properties import qed, sa_score
    from medgen.chem.similarity import packed_fingerprints

    names = ("fragments", "scaffolds", "filters", "logP", "SA", "QED", "weight")
    out: dict[str, Any] = {name: [] for name in names + (("dualuse",) if dualuse else ())}
    for m in mols:
        out["fragments"].append(brics_fragments(m))
        out["scaffolds"].append(compute_scaffold(m))
        out["filters"].append(moses_filters_pass(m))
        # rdkit-stubs omit the descriptors RDKit builds at import time (MolLogP, MolWt)
        logp = Crippen.MolLogP(m)  # type: ignore[attr-defined]
        words = pattern_words(m)  # screens both the QED and the dual-use alerts
        out["logP"].append(logp)
        out["SA"].append(sa_score(m))
        out["QED"].append(qed(m, logp=logp, words=words))
        out["weight"].append(Descriptors.MolWt(m))  # type: ignore[attr-defined]
        if dualuse:
            out["dualuse"].append(";".join(dualuse_alerts(m, words)))
    return {"fps": packed_fingerprints(mols)} | out


def _kl_of_mols(mols: Sequence) -> dict[str, np.ndarray]:
    from rdkit.ML.Descriptors import MoleculeDescriptors

    from medgen.chem.similarity import packed_fingerprints

    calc = MoleculeDescriptors.MolecularDescriptorCalculator(list(KL_DESCRIPTORS))
    desc = np.array([calc.CalcDescriptors(m) for m in mols], dtype=np.float64)
    return {
        "kl_descriptors": np.nan_to_num(desc.reshape(len(mols), len(KL_DESCRIPTORS))),
        "kl_fps": packed_fingerprints(mols, radius=2, n_bits=4096),
    }


def features(
    smiles: Sequence[str], *, n_jobs: int = 1, chunk_size: int = 1000, with_kl: bool = False
) -> dict[str, Any]:
    """:func:`molecule_features` over a process pool, merged in input order."""
    from medgen.chem.parallel import map_chunks

    chunks = [list(smiles[i : i + chunk_size]) for i in range(0, len(smiles), chunk_size)]
    out = merge_chunks(map_chunks(molecule_features, chunks, n_jobs=n_jobs, args=(with_kl,)))
    if "fps" in out:
        out["fps"] = np.unpackbits(out["fps"], axis=1)[:, :1024]
    if "kl_fps" in out:
        out["kl_fps"] = np.unpackbits(out["kl_fps"], axis=1)[:, :4096]
    return out


def sample_features(
    smiles: Sequence[str | None],
    chemnet: bool = False,
    batch_size: int = 512,
    dualuse: bool = False,
) -> dict[str, Any]:
    """What the metrics need from generated SMILES (any, invalid included), each parsed once
    (twice when not written canonically: the features come from its canonical SMILES).

    ``canonical``: one entry per input (None when invalid). For the valid ones, in order: the
    :func:`mol_features` values, ``flat`` (canonical SMILES without stereo, for GuacaMol),
    ``fcd_smiles`` (what ChemNet reads), with ``chemnet`` its ``activations (n, 512)`` and with
    ``dualuse`` the :data:`medgen.chem.dualuse.COLUMN` values (``dualuse``). The features are
    those of the molecule of the *canonical* SMILES (as when canonical SMILES are given to
    :func:`molecule_features`), so they do not depend on how the input was written.
    """
    from rdkit import Chem

    canonical: list[str | None] = []
    mols = []
    for s in smiles:
        mol = parse_smiles(s)
        text = Chem.MolToSmiles(mol) if mol is not None else None
        canonical.append(text)
        if mol is None:
            continue
        if text != str(s).strip():  # already canonical (most samples): the same text, parsed
            mol = parse_smiles(text)
            if mol is None:  # RDKit writes what it can read
                raise ValueError(f"the canonical SMILES {text!r} of {s!r} does not parse again")
        mols.append(mol)
    out = mol_features(mols, dualuse=dualuse)
    out["canonical"] = canonical
    out["flat"] = [Chem.MolToSmiles(m, isomericSmiles=False) for m in mols]
    out["fcd_smiles"] = [Chem.MolToSmiles(m) for m in mols]
    if chemnet:
        from medgen.chem.fcd import chemnet_activations

        acts = chemnet_activations(out["fcd_smiles"], batch_size=batch_size, canonical=True)
        out["activations"] = acts.astype(np.float32)
    return out


def kl_features(smiles: Sequence[str]) -> dict[str, np.ndarray]:
    """GuacaMol KL inputs of valid SMILES: ``kl_descriptors (n, 9)`` and packed 4096-bit
    fingerprints ``kl_fps (n, 512)``."""
    mols = [parse_smiles(s) for s in smiles]
    bad = [s for s, m in zip(smiles, mols, strict=True) if m is None]
    if bad:
        raise ValueError(f"kl_features needs valid SMILES; got {bad[0]!r}")
    return _kl_of_mols(mols)


def evaluation_features(
    smiles: Sequence[str | None],
    *,
    fcd: bool = True,
    dualuse: bool = False,
    device: str = "cpu",
    batch_size: int = 512,
    n_jobs: int = 1,
    executor: ProcessPoolExecutor | None = None,
    chunk_size: int = 1000,
) -> dict[str, Any]:
    """:func:`sample_features` over chunks in worker processes, merged in input order; with
    ``fcd``, ``fcd_mu`` and ``fcd_sigma`` too (ChemNet runs in the workers on the CPU, or here on
    another ``device``)."""
    from medgen.chem.fcd import activation_statistics, chemnet_activations
    from medgen.chem.parallel import map_chunks

    in_workers = fcd and device == "cpu"
    chunks = [list(smiles[i : i + chunk_size]) for i in range(0, len(smiles), chunk_size)]
    args = (in_workers, batch_size, dualuse)
    parts = map_chunks(sample_features, chunks, n_jobs=n_jobs, args=args, executor=executor)
    out = merge_chunks(parts)
    out.setdefault("canonical", [])
    if fcd and len(out.get("fcd_smiles", ())) >= 2:
        acts = out.pop("activations", None)
        if acts is None:
            acts = chemnet_activations(
                out["fcd_smiles"], batch_size=batch_size, device=device, canonical=True
            )
        out["fcd_mu"], out["fcd_sigma"] = activation_statistics(acts)
    return out


def kl_features_pooled(
    smiles: Sequence[str],
    *,
    n_jobs: int = 1,
    executor: ProcessPoolExecutor | None = None,
    chunk_size: int = 1000,
) -> dict[str, np.ndarray]:
    """:func:`kl_features` over chunks in worker processes, merged in input order."""
    from medgen.chem.parallel import map_chunks

    chunks = [list(smiles[i : i + chunk_size]) for i in range(0, len(smiles), chunk_size)]
    return merge_chunks(map_chunks(kl_features, chunks, n_jobs=n_jobs, executor=executor))


def reference_index(stats: ReferenceStats) -> FingerprintIndex:
    """``stats.fps`` prepared for nearest-neighbour search (distinct, sorted by popcount), kept on
    ``stats`` and cached as a plain ``.npz`` in ``stats.cache_dir`` (keyed by the fingerprints'
    sha256), so a later run skips the preparation."""
    from medgen.chem.similarity import fingerprint_index, sorted_fingerprint_index

    if stats._index is not None:
        return stats._index
    packed = np.packbits(stats.fps, axis=1)
    key = hashlib.sha256(packed.tobytes()).hexdigest()[:16]
    cache = None if stats.cache_dir is None else Path(stats.cache_dir) / f"fps-{key}.npz"
    if cache is not None and cache.is_file():
        data = read_npz(cache, ("bits", "counts", "size"), hint=_CACHE_HINT)
        index = sorted_fingerprint_index(
            data["bits"], data["counts"], stats.fps.shape[1], int(data["size"])
        )
    else:
        index = fingerprint_index(packed, stats.fps.shape[1])
        if cache is not None:
            _save_index(index, cache)
    stats._index = index
    return index


def _save_index(index: FingerprintIndex, path: Path) -> None:
    from medgen.utils.atomic import atomic_path

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, bits=index.bits, counts=index.counts, size=np.array(index.size))
    except OSError as err:  # a read-only data folder: the index is only kept in memory
        log.warning("cannot cache reference fingerprints in %s: %s", path, err)


def merge_chunks(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-chunk feature dicts joined in order: arrays concatenated, lists chained."""
    merged: dict[str, list] = {}
    for part in parts:
        for key, value in part.items():
            merged.setdefault(key, []).append(value)
    return {
        key: np.concatenate(v) if isinstance(v[0], np.ndarray) else [x for p in v for x in p]
        for key, v in merged.items()
    }


# --------------------------------------------------------------------------------------------
# building, saving and loading statistics


def compute_reference_stats(
    smiles: Sequence[str],
    *,
    name: str = "reference",
    n_jobs: int = 1,
    batch_size: int = 512,
    device: str = "cpu",
    kl_size: int = 10_000,
    seed: int = 42,
) -> ReferenceStats:
    """Statistics of the valid molecules in ``smiles`` (canonicalized; invalid ones dropped).

    GuacaMol descriptors use a random subset of ``kl_size`` unique molecules (seeded).
    """
    from medgen.chem.fcd import fcd_statistics

    canon = [c for c in (canonical_smiles(s) for s in smiles) if c is not None]
    if len(canon) < 2:
        raise ValueError(f"reference {name!r} has {len(canon)} valid molecules; need at least 2")
    feats = features(canon, n_jobs=n_jobs)
    mu, sigma = fcd_statistics(canon, batch_size=batch_size, device=device)
    kl_descriptors, kl_similarity = compute_kl_reference(
        canon, n_jobs=n_jobs, size=kl_size, seed=seed
    )
    return ReferenceStats(
        name=name,
        fcd_mu=mu,
        fcd_sigma=sigma,
        fps=feats["fps"],
        fragments=dict(Counter(f for frags in feats["fragments"] for f in frags)),
        scaffolds=dict(Counter(s for s in feats["scaffolds"] if s is not None)),
        properties={k: np.asarray(feats[k], dtype=np.float64) for k in PROPERTY_NAMES},
        kl_descriptors=kl_descriptors,
        kl_internal_similarity=kl_similarity,
    )


def compute_kl_reference(
    smiles: Sequence[str], *, n_jobs: int = 1, size: int = 10_000, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """GuacaMol KL reference: descriptors ``(M, 9)`` and internal max similarity ``(M,)`` of a
    seeded random subset of ``size`` unique molecules (stereo removed, as GuacaMol does)."""
    from medgen.chem.similarity import internal_max_similarity

    # draw raw SMILES in a seeded random order, canonicalizing only until `size` unique are found
    order = np.random.default_rng(seed).permutation(len(smiles))
    subset: dict[str, None] = {}
    for i in order:
        canon = canonical_smiles(smiles[i], isomeric=False)
        if canon:
            subset[canon] = None
            if len(subset) >= size:
                break
    kl = features(sorted(subset), n_jobs=n_jobs, with_kl=True)
    return kl["kl_descriptors"], internal_max_similarity(kl["kl_fps"])


def cached_kl_reference(
    path: str | os.PathLike, cache_dir: str | os.PathLike, *, size: int = 10_000, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`compute_kl_reference` of the SMILES file ``path``, cached in ``cache_dir``."""
    from medgen.utils.atomic import atomic_path
    from medgen.utils.provenance import file_sha256

    path = Path(path)
    key = hashlib.sha256(f"{file_sha256(path)}:kl:{size}:{STATS_VERSION}".encode()).hexdigest()
    cache = Path(cache_dir) / f"{path.name.split('.')[0]}-kl-{key[:16]}.npz"
    if cache.is_file():
        data = read_npz(cache, ("descriptors", "internal_similarity"), hint=_CACHE_HINT)
        return data["descriptors"], data["internal_similarity"]
    log.info("computing GuacaMol KL reference of %s (%d molecules)", path, size)
    descriptors, similarity = compute_kl_reference(_read_smiles(path), size=size, **kwargs)
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, descriptors=descriptors, internal_similarity=similarity)
    return descriptors, similarity


def _read_smiles(path: Path, smiles_column: str | None = None, limit: int | None = None):
    from medgen.chem.io import read_molecules

    return [
        s
        for chunk in read_molecules(path, smiles_column=smiles_column, limit=limit)
        for s in chunk["smiles"].tolist()
        if isinstance(s, str)
    ]


def save_stats(stats: ReferenceStats, path: str | os.PathLike) -> Path:
    """Write ``stats`` to an ``.npz`` that loads without pickle."""
    from medgen.utils.atomic import atomic_path  # (medgen.utils imports torch: keep it lazy)

    arrays: dict[str, np.ndarray] = {
        "version": np.array(STATS_VERSION),
        "name": np.array(stats.name),
        "fcd_mu": stats.fcd_mu,
        "fcd_sigma": stats.fcd_sigma,
        "fps": np.packbits(stats.fps, axis=1),
        "frag_keys": np.array(list(stats.fragments), dtype=str),
        "frag_counts": np.array(list(stats.fragments.values()), dtype=np.int64),
        "scaf_keys": np.array(list(stats.scaffolds), dtype=str),
        "scaf_counts": np.array(list(stats.scaffolds.values()), dtype=np.int64),
    }
    arrays |= {f"prop_{k}": v for k, v in stats.properties.items()}
    if stats.kl_descriptors is not None:
        # the two KL arrays are computed together (compute_kl_reference)
        assert stats.kl_internal_similarity is not None
        arrays["kl_descriptors"] = stats.kl_descriptors
        arrays["kl_internal_similarity"] = stats.kl_internal_similarity
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, allow_pickle=False, **arrays)
    return Path(path)


def load_stats(path: str | os.PathLike, *, hint: str = "") -> ReferenceStats:
    """Load statistics written by :func:`save_stats` (``allow_pickle=False``).

    Raises :class:`InputFileError` naming ``path`` (plus ``hint``, what to do about it) when the
    file is not such an ``.npz``: corrupt, holding pickled objects, lacking keys, another version.
    """
    data = read_npz(path, _STATS_KEYS, hint=hint)
    if int(data["version"]) != STATS_VERSION:
        raise InputFileError(
            f"{path}: statistics version {int(data['version'])}, need {STATS_VERSION}{hint}"
        )
    n_bits = 1024
    return ReferenceStats(
        name=str(data["name"]),
        fcd_mu=data["fcd_mu"],
        fcd_sigma=data["fcd_sigma"],
        fps=np.unpackbits(data["fps"], axis=1)[:, :n_bits],
        fragments=dict(zip(data["frag_keys"].tolist(), data["frag_counts"].tolist(), strict=True)),
        scaffolds=dict(zip(data["scaf_keys"].tolist(), data["scaf_counts"].tolist(), strict=True)),
        properties={k: data[f"prop_{k}"] for k in PROPERTY_NAMES if f"prop_{k}" in data},
        kl_descriptors=data.get("kl_descriptors"),
        kl_internal_similarity=data.get("kl_internal_similarity"),
    )


def read_npz(
    path: str | os.PathLike, required: Sequence[str] = (), *, hint: str = ""
) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``, read with ``allow_pickle=False``.

    Raises :class:`InputFileError` naming the file (and adding ``hint``) when it is not an
    ``.npz``, is truncated or corrupt, holds pickled Python objects (object arrays) or lacks one
    of the ``required`` keys.
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":  # every .npz is a zip file
        kind = {b"\x80": " (it is a pickle)", b"\x93": " (it is a single .npy)"}.get(head[:1], "")
        raise InputFileError(f"{path} is not an .npz file{kind}{hint}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise InputFileError(f"{path} cannot be read as .npz: {err}{hint}") from err
        raise InputFileError(
            f"{path} holds pickled Python objects (object arrays), which medgen never loads: it "
            f"reads plain arrays only{hint}"
        ) from err
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise InputFileError(f"{path} is truncated or corrupt ({err}){hint}") from err
    missing = [key for key in required if key not in data]
    if missing:
        raise InputFileError(f"{path} lacks {missing} (has {sorted(data)}){hint}")
    return data


def load_moses_stats(path: str | os.PathLike, name: str | None = None) -> ReferenceStats:
    """Load MOSES statistics converted by ``medgen data moses`` (``allow_pickle=False``).

    ``path`` is the converted ``<split>_stats.plain.npz``, or MOSES's own ``<split>_stats.npz``
    (pickled, never loaded), which stands for its converted sibling. Raises
    :class:`MissingFileError` telling the user to run ``medgen data moses`` when that is missing.
    """
    path = Path(path)
    if not path.name.endswith(PLAIN_SUFFIX):
        path = path.with_name(path.name.removesuffix(".npz") + PLAIN_SUFFIX)
    hint = "; run `medgen data moses` to convert MOSES's statistics again"
    if not path.is_file():
        raise MissingFileError(
            f"converted MOSES statistics {path} not found; run `medgen data moses` (or "
            f"`medgen data moses paths.data_dir={path.parent.parent}`) to convert them"
        )
    stats = load_stats(path, hint=hint)
    stats.name = name or path.name.removesuffix(PLAIN_SUFFIX).removesuffix("_stats")
    stats.cache_dir = path.parent.parent / "cache" / "reference"  # <data_dir>/cache/reference
    return stats


def cached_reference_stats(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    smiles_column: str | None = None,
    limit: int | None = None,
    **kwargs: Any,
) -> ReferenceStats:
    """Statistics of the SMILES file ``path``, computed once and cached in ``cache_dir`` under a
    key made of the file's sha256, ``limit`` and the stats version."""
    from medgen.utils.provenance import file_sha256

    path = Path(path)
    key = hashlib.sha256(f"{file_sha256(path)}:{limit}:{STATS_VERSION}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{path.name.split('.')[0]}-{key}.npz"
    if cache.is_file():
        log.info("reference statistics from cache %s", cache)
        stats = load_stats(cache, hint=_CACHE_HINT)
    else:
        smiles = _read_smiles(path, smiles_column, limit)
        log.info("computing reference statistics of %s (%d SMILES)", path, len(smiles))
        stats = compute_reference_stats(smiles, name=path.name.split(".")[0], **kwargs)
        save_stats(stats, cache)
        log.info("cached reference statistics in %s", cache)
    stats.cache_dir = Path(cache_dir)
    return stats
