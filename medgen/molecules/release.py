"""What a molecule cohort needs before it leaves the site: the training set it must not copy,
``novel_only`` selection, the novelty report, and the molecule card.

The training set of a checkpoint is found, in this order, in:

1. ``train_smiles=<file>`` (any molecule file medgen reads; canonicalized here);
2. ``train_set.npz`` in the checkpoint's run dir, which :class:`medgen.molecules.callbacks.
   MoleculeSampling` writes when training starts: sorted 64-bit keys of the training SMILES
   (never the SMILES), a description without paths, and properties of 1,000 of them;
3. the run dir's ``config.yaml``: its ``data`` node rebuilt (the split is drawn by its seed, so
   it is the training split again; the graph cache makes this quick).

Molecules are compared as canonical SMILES without stereo (:func:`medgen.molecules.graph.
mol_to_smiles`, what the decoder writes), through the first 8 bytes of their sha256.

``novel_only``: the output is the first ``n`` molecules of the index stream ``0, 1, 2, ...`` that
are not training copies, so molecule ``i`` still depends on ``(settings, i)`` only; the rows keep
their stream index and the summary says how many copies were dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medgen.errors import ConfigError, InputFileError, UserError
from medgen.utils.logging import get_logger

log = get_logger(__name__)

TRAIN_SET_FILE = "train_set.npz"
PROPERTY_SAMPLE = 1000  # training molecules whose properties the card compares with
PROPERTIES = ("heavy_atoms", "qed", "logp")
MAX_DRAW_FACTOR = 10  # novel_only gives up after drawing this many times n (plus 1,000)

MOLECULE_USE = (
    "Molecules: research on generative models (benchmarks, augmenting training sets, exploring "
    "chemical space); every molecule is a model proposal, not a measured compound."
)
LIMITS = (
    "Molecules are model proposals: no property, activity or safety of any of them was measured.",
    "Validity is RDKit's sanitization only; synthesizability and stability are not checked.",
    "Novelty is exact identity (canonical SMILES without stereo) against the training set; "
    "near copies (a changed atom or stereo centre) count as novel.",
    "The dual-use screen flags listed structural classes only; an empty count does not make a "
    "molecule safe (see the dual-use section of docs/release.md).",
    "The training set's biases (chemical series, size, element coverage) are the model's.",
)


# ----------------------------------------------------------------------------- options

# the key of ``SampleSettings.extra`` with the molecule release options of ``medgen sample``
OPTIONS_KEY = "molecules"


@dataclass(frozen=True)
class MoleculeOptions:
    """``medgen sample``'s release settings of molecule models (``conf/sample/molecules.yaml``).

    Attributes:
        novel_only: drop training copies, still writing ``n`` molecules.
        dualuse: screen every molecule for dual-use alerts (a column and counts).
        train_smiles: the training SMILES file, when the checkpoint's run dir lacks its record
            (local: written nowhere).
    """

    novel_only: bool = False
    dualuse: bool = True
    train_smiles: str | None = None

    def public(self) -> dict[str, Any]:
        """What outputs record (no local path)."""
        return {"novel_only": self.novel_only, "dualuse": self.dualuse}


def molecule_options(settings: Any) -> MoleculeOptions:
    """The :class:`MoleculeOptions` ``settings.extra`` carries (the defaults when none)."""
    values = (getattr(settings, "extra", None) or {}).get(OPTIONS_KEY) or {}
    return MoleculeOptions(**values) if isinstance(values, Mapping) else MoleculeOptions()


def with_molecule_options(settings: Any, options: MoleculeOptions) -> Any:
    """``settings`` (a ``SampleSettings``) carrying ``options`` (none when all are defaults)."""
    extra = {k: v for k, v in settings.extra.items() if k != OPTIONS_KEY}
    if options != MoleculeOptions():
        extra[OPTIONS_KEY] = {"novel_only": options.novel_only, "dualuse": options.dualuse,
                              "train_smiles": options.train_smiles}  # fmt: skip
    return settings.replace(extra=extra)


def molecule_release(
    settings: Any,
    generator: Any,
    checkpoint: Path,
    *,
    novel_only: bool,
    dualuse: bool,
    train_smiles: str | None,
) -> Any:
    """``medgen sample``'s check of the molecule release keys: ``settings`` carrying them for a
    molecule model; a scan model refuses any but the defaults (``ConfigError`` naming the key),
    and ``novel_only`` needs a training set it can find (:func:`require_training_set`)."""
    options = MoleculeOptions(bool(novel_only), bool(dualuse), train_smiles)
    if str(getattr(generator, "output", "")) != "molecules":
        for key, value in options.__dict__.items():
            if value != getattr(MoleculeOptions(), key):
                raise ConfigError(key, value, f"{getattr(MoleculeOptions(), key)} for a scan model")
        return settings
    if novel_only:
        require_training_set(checkpoint, train_smiles)
    elif train_smiles is not None:
        training_set_source(checkpoint, train_smiles)  # the file must exist
    return with_molecule_options(settings, options)


def public_settings(settings: Any) -> dict[str, Any]:
    """The settings outputs record: without the release options' local paths."""
    from medgen.marking import public_settings as shared

    record = shared(settings)
    extra = dict(record.get("extra") or {})
    if OPTIONS_KEY in extra:
        extra[OPTIONS_KEY] = molecule_options(settings).public()
    return {**record, "extra": extra}


# ----------------------------------------------------------------------------- training set


def smiles_keys(smiles: Iterable[str]) -> np.ndarray:
    """Sorted unique uint64 keys (the first 8 bytes of sha256) of SMILES strings, ``(K,)``."""
    keys = [int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little") for s in smiles]
    return np.unique(np.asarray(keys, dtype=np.uint64))


def property_values(smiles: Iterable[str | None]) -> dict[str, np.ndarray]:
    """Heavy atoms, QED and Crippen logP of the valid SMILES, ``(M,)`` float64 each."""
    from medgen.chem.mol import parse_smiles
    from medgen.chem.properties import logp, qed

    rows = []
    for mol in map(parse_smiles, smiles):
        if mol is not None:
            lp = logp(mol)  # QED's own logP term: computed once
            rows.append((mol.GetNumHeavyAtoms(), qed(mol, logp=lp), lp))
    table = np.asarray(rows, dtype=np.float64).reshape(-1, len(PROPERTIES))
    return {name: table[:, k] for k, name in enumerate(PROPERTIES)}


@dataclass
class TrainingSet:
    """The molecules a model was trained on, as keys (see :func:`smiles_keys`).

    Attributes:
        keys: sorted unique uint64 keys of the training SMILES, ``(K,)``.
        size: training molecules (duplicates included).
        description: what the data was, without paths (source name and sha256, split).
        properties: ``heavy_atoms``, ``qed``, ``logp`` of up to 1,000 training molecules.
    """

    keys: np.ndarray
    size: int
    description: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_smiles(
        cls, smiles: Sequence[str], description: Mapping[str, Any] | None = None, seed: int = 0
    ) -> TrainingSet:
        """Keys of ``smiles`` and properties of a seeded sample of 1,000 of them."""
        keys = smiles_keys(smiles)
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(smiles), size=min(PROPERTY_SAMPLE, len(smiles)), replace=False)
        props = property_values(smiles[int(k)] for k in np.sort(picked))
        record = {**dict(description or {}), "molecules": len(smiles)}
        record["train_set_sha256"] = hashlib.sha256(keys.tobytes()).hexdigest()
        return cls(keys, len(smiles), record, props)

    def contains(self, smiles: Sequence[str | None]) -> np.ndarray:
        """``(len(smiles),)`` bool: which entries are training molecules (None: never)."""
        mask = np.zeros(len(smiles), dtype=bool)
        valid = [k for k, s in enumerate(smiles) if s]
        if valid and len(self.keys):
            keys = np.asarray(
                [int.from_bytes(hashlib.sha256(str(smiles[k]).encode()).digest()[:8], "little")
                 for k in valid], dtype=np.uint64,
            )  # fmt: skip
            at = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
            mask[valid] = self.keys[at] == keys
        return mask

    def save(self, path: str | os.PathLike) -> Path:
        """Write as ``.npz`` (no pickled objects), atomically."""
        from medgen.utils.atomic import atomic_path

        arrays: dict[str, Any] = {f"prop_{k}": v for k, v in self.properties.items()}
        meta = json.dumps({"size": self.size, "description": self.description}, sort_keys=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=self.keys, meta=np.array(meta), **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingSet:
        """Read a :meth:`save` file (``allow_pickle=False``); a bad one is an InputFileError."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                props = {k[5:]: data[k].astype(np.float64) for k in data.files if k[:5] == "prop_"}
                return cls(data["keys"].astype(np.uint64), int(meta["size"]),
                           dict(meta["description"]), props)  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputFileError(f"{path}: not a readable training-set record ({err})") from err


def data_description(path: str | os.PathLike | None, **split: Any) -> dict[str, Any]:
    """A training-data description without paths: the source's file name and sha256 (or the
    embedded MOSES sample) and the split settings."""
    from medgen.utils.provenance import file_sha256

    if path is None:
        record: dict[str, Any] = {"source": "embedded MOSES sample (medgen)"}
    else:
        source = Path(path).expanduser()
        record = {"source": source.name}
        if source.is_file():
            record["source_sha256"] = file_sha256(source)
    record["split"] = {k: v for k, v in split.items() if not isinstance(v, os.PathLike)}
    return record


def run_dir(checkpoint: str | os.PathLike) -> Path:
    """The run dir of a checkpoint file (``<run>/checkpoints/last.ckpt`` -> ``<run>``)."""
    folder = Path(checkpoint).parent
    return folder.parent if folder.name == "checkpoints" else folder


def training_set_source(checkpoint: str | os.PathLike, train_smiles: str | None) -> str | None:
    """Where :func:`find_training_set` would read the training set, or None (cheap: nothing is
    read). Raises for a ``train_smiles`` file that does not exist."""
    from medgen.errors import MissingFileError

    if train_smiles is not None:
        if not Path(train_smiles).expanduser().is_file():
            raise MissingFileError(f"train_smiles={train_smiles}: no such file")
        return "train_smiles"
    run = run_dir(checkpoint)
    if (run / TRAIN_SET_FILE).is_file():
        return TRAIN_SET_FILE
    data = _data_node(run)
    if data is not None:
        path = data.get("path")
        if path is None or Path(str(path)).expanduser().is_file():
            return "config.yaml"
    return None


def require_training_set(checkpoint: str | os.PathLike, train_smiles: str | None) -> None:
    """The ``novel_only=true`` check before any output: a UserError naming the key when the
    training set cannot be found."""
    if training_set_source(checkpoint, train_smiles) is None:
        raise ConfigError(
            "novel_only", True,
            f"false, or train_smiles=<the training SMILES file>: the run dir of {checkpoint} "
            f"holds no {TRAIN_SET_FILE} and no config.yaml whose data source is still there",
        )  # fmt: skip


def find_training_set(
    checkpoint: str | os.PathLike, train_smiles: str | None = None
) -> TrainingSet | None:
    """The checkpoint's training set (see the module docstring), or None when none is found."""
    where = training_set_source(checkpoint, train_smiles)
    if where == "train_smiles":
        assert train_smiles is not None
        return _from_file(Path(train_smiles).expanduser())
    if where == TRAIN_SET_FILE:
        return TrainingSet.load(run_dir(checkpoint) / TRAIN_SET_FILE)
    if where == "config.yaml":
        return _from_config(checkpoint)
    return None


def _from_file(path: Path) -> TrainingSet:
    from medgen.chem.io import read_molecules
    from medgen.chem.mol import canonical_smiles

    smiles: list[str] = []
    for chunk in read_molecules(path):
        flat = (canonical_smiles(s, isomeric=False) for s in chunk["smiles"].tolist())
        smiles.extend(s for s in flat if s)
    if not smiles:
        raise InputFileError(f"train_smiles={path}: no valid SMILES in the file")
    return TrainingSet.from_smiles(smiles, data_description(path))


def _data_node(run: Path) -> dict[str, Any] | None:
    """The ``data`` node of a molecule run's ``config.yaml`` (a medgen data module), or None."""
    config = run / "config.yaml"
    if not config.is_file():
        return None
    from omegaconf import DictConfig, OmegaConf

    try:
        loaded = OmegaConf.load(config)
        data = loaded.get("data") if isinstance(loaded, DictConfig) else None
        node = OmegaConf.to_container(data, resolve=False) if data is not None else None
    except Exception:  # noqa: BLE001 - an unreadable config only means: not found here
        return None
    if not isinstance(node, dict) or not str(node.get("_target_", "")).startswith("medgen."):
        return None
    return {str(k): v for k, v in node.items()}


def _from_config(checkpoint: str | os.PathLike) -> TrainingSet | None:
    import hydra

    from medgen.utils.checkpoint import load_medgen_checkpoint

    node = _data_node(run_dir(checkpoint))
    if node is None:
        return None
    log.info("training set of %s: rebuilding the split of its run's data config", checkpoint)
    dm = hydra.utils.instantiate(node)
    if not hasattr(dm, "train_smiles"):
        return None
    dm.setup("fit")
    tokens = load_medgen_checkpoint(checkpoint)[1]["hyper_parameters"].get("vocabulary")
    if tokens and list(dm.vocabulary.tokens) != list(tokens):
        dm.use_vocabulary(tokens)  # what training did: the model's vocabulary wins
    split = {k: node.get(k) for k in ("seed", "val_fraction", "test_fraction", "limit",
                                      "max_atoms")}  # fmt: skip
    return TrainingSet.from_smiles(dm.train_smiles(), data_description(node.get("path"), **split))


# ----------------------------------------------------------------------------- novelty


@dataclass(frozen=True)
class Selection:
    """The rows of a cohort: stream ``indices`` and their ``smiles``; ``copies``: training
    copies among them (without ``novel_only``) or dropped (with it); ``drawn``: draws looked at."""

    indices: list[int]
    smiles: list[str | None]
    copies: int
    drawn: int


def select(
    found: Mapping[int, str | None],
    n: int,
    *,
    train: TrainingSet | None,
    novel_only: bool,
    draw: Callable[[list[int]], Mapping[int, str | None]] | None = None,
    batch_size: int = 1000,
) -> Selection:
    """Rows ``0..n-1`` of ``found``; with ``novel_only`` the first ``n`` draws of the index
    stream that are not training copies, drawing indices from ``n`` on with ``draw`` (it returns
    ``{index: smiles}`` and the new draws are added to ``found``'s copy)."""
    if not novel_only or train is None:
        smiles = [found[i] for i in range(n)]
        copies = 0 if train is None else int(train.contains(smiles).sum())
        return Selection(list(range(n)), smiles, copies, n)
    pool = dict(found)
    limit = MAX_DRAW_FACTOR * n + 1000
    kept: list[int] = []
    dropped, i = 0, 0  # i: the next index of the stream to look at
    while len(kept) < n:
        if i >= limit:
            raise UserError(
                f"novel_only=true: only {len(kept)} of n={n} molecules are not training copies "
                f"after {i} draws; the model reproduces its training set (set novel_only=false "
                "to see the copies)"
            )
        if i not in pool:
            if draw is None:
                raise RuntimeError(f"novel_only: molecule {i} is not drawn and no draw() given")
            need = max(batch_size, 2 * (n - len(kept)))
            pool.update(draw(list(range(i, min(limit, i + need)))))
            if i not in pool:
                raise RuntimeError(f"novel_only: draw() did not return molecule {i}")
        chunk: list[int] = []  # the drawn run of the stream from i
        while i + len(chunk) in pool and len(chunk) < max(batch_size, n):
            chunk.append(i + len(chunk))
        for j, copy in zip(chunk, train.contains([pool[j] for j in chunk]).tolist(), strict=True):
            if len(kept) == n:
                break
            i = j + 1
            if copy:
                dropped += 1
            else:
                kept.append(j)
    return Selection(kept, [pool[j] for j in kept], dropped, i)


def novelty_report(selection: Selection, train: TrainingSet | None, *, novel_only: bool,
                   reason: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The memorization figures of a cohort (``novelty`` as MOSES defines it: the share of the
    unique valid molecules not in the training set)."""
    if train is None:
        return {"novelty": None, "training_copies": None,
                "reason": reason or "training set not found"}  # fmt: skip
    unique = sorted({s for s in selection.smiles if s})
    copies_unique = int(train.contains(unique).sum()) if unique else 0
    record: dict[str, Any] = {
        "novelty": (len(unique) - copies_unique) / len(unique) if unique else 0.0,
        "training_copies": 0 if novel_only else selection.copies,
        "novel_only": novel_only,
    }
    if novel_only:
        record["dropped_training_copies"] = selection.copies
        record["draws"] = selection.drawn
    return record


# ----------------------------------------------------------------------------- card


def property_comparison(
    smiles: Sequence[str | None], train: TrainingSet | None, limit: int = 2000
) -> dict[str, Any]:
    """Means of heavy atoms, QED and logP of (up to ``limit``) valid samples and of the training
    sample, and the Wasserstein-1 distance between the two per property (a size and
    drug-likeness bias check)."""
    from scipy.stats import wasserstein_distance

    valid = [s for s in smiles if s][:limit]
    ours = property_values(valid)
    out: dict[str, Any] = {"molecules": len(valid), "samples": {}, "training": {},
                           "wasserstein": {}}  # fmt: skip
    for name in PROPERTIES:
        values = ours[name]
        out["samples"][name] = float(values.mean()) if len(values) else None
        theirs = None if train is None else train.properties.get(name)
        if theirs is not None and len(theirs):
            out["training"][name] = float(theirs.mean())
            if len(values):
                out["wasserstein"][name] = float(wasserstein_distance(values, theirs))
    return out


def molecule_card(
    *,
    file_name: str,
    marking: Mapping[str, Any],
    summary: Mapping[str, Any],
    train: TrainingSet | None,
    properties: Mapping[str, Any],
    dualuse: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The card of a molecule cohort (:func:`medgen.card.write_card`'s dict; no paths)."""
    from medgen.card import INTENDED_USE
    from medgen.chem.dualuse import class_names

    evaluation: dict[str, Any] = {k: summary.get(k) for k in ("n", "validity", "uniqueness")}
    evaluation.update(summary.get("memorization") or {})
    screen: dict[str, Any] = {"enabled": dualuse is not None}
    if dualuse is not None:
        screen.update(screened=dualuse.get("screened"), flagged=dualuse.get("flagged"))
        screen.update({f"class: {k}": v for k, v in (dualuse.get("by_class") or {}).items()})
    bias: dict[str, Any] = {"valid molecules compared": properties.get("molecules")}
    for name in PROPERTIES:
        ours = (properties.get("samples") or {}).get(name)
        theirs = (properties.get("training") or {}).get(name)
        distance = (properties.get("wasserstein") or {}).get(name)
        bias[f"{name} mean (samples / training)"] = f"{_fmt(ours)} / {_fmt(theirs)}"
        bias[f"{name} Wasserstein-1"] = distance
    flagged = screen.get("flagged")
    return {
        "title": f"Molecule cohort card: {file_name}",
        "summary": (
            f"{summary.get('n')} synthetic molecules drawn by medgen from checkpoint sha256 "
            f"{str(marking.get('checkpoint_sha256'))[:12]}; "
            f"validity {_fmt(summary.get('validity'))}, "
            f"novelty {_fmt(evaluation.get('novelty'))}, dual-use alerts {_fmt(flagged)}."
        ),
        "sections": {
            "Model": {
                "generator": marking.get("generator"),
                "checkpoint_sha256": marking.get("checkpoint_sha256"),
                "medgen_version": marking.get("medgen_version"),
            },
            "Training data": dict(train.description) if train is not None else {"found": False},
            "Settings": dict(marking.get("settings") or {}),
            "Evaluation": evaluation,
            "Dual-use screen": screen,
            "Size and drug-likeness vs training (bias check)": bias,
            "Dual-use classes screened": class_names(),
            "Intended use": [*INTENDED_USE, MOLECULE_USE],
            "Limits": list(LIMITS),
        },
    }


def write_molecule_card(out: Path, card: Mapping[str, Any], *, share: bool) -> tuple[Path, Path]:
    """The card beside the molecule file ``out`` (``mols.CARD.md``, ``mols.card.json``)."""
    from medgen.card import write_card

    return write_card(out, dict(card), shareable=share)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)
