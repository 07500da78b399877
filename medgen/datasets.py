"""Packaged molecule data sets, unpacked into the data folder by ``medgen data moses|qm9``.

The MOSES sets ship inside the ``molsets`` wheel and QM9 inside the ``qm9pack`` wheel (both MIT
licensed). The wheel is fetched with ``pip download --no-deps`` (the package registry; nothing else
is contacted), checked against its pinned sha256 and read as a zip file by path: the packages' code
is never imported or installed.

MOSES's precomputed statistics are a pickled dict. They are converted once, here, into plain
arrays (:func:`convert_moses_stats`: the file's sha256 is checked against the pinned value first,
and the pickle is parsed by an unpickler that can only rebuild numpy arrays and ``Counter``), so
``medgen evaluate`` reads them with ``allow_pickle=False``. Nothing in medgen unpickles a file.

Layout written (``<data_dir>`` defaults to ``$MEDGEN_DATA_DIR`` or ``./data``)::

    <data_dir>/moses/train.csv.gz            1,584,663 SMILES (column SMILES)
    <data_dir>/moses/test.csv.gz               176,074
    <data_dir>/moses/test_scaffolds.csv.gz     176,225
    <data_dir>/moses/test_stats.npz            MOSES precomputed reference statistics (FCD mu/
    <data_dir>/moses/test_scaffolds_stats.npz  sigma, SNN fingerprints, Frag/Scaf counts, ...)
    <data_dir>/moses/test_stats.plain.npz      the same, converted to plain arrays (what
    <data_dir>/moses/test_scaffolds_stats.plain.npz   ``medgen evaluate reference=moses`` reads)
    <data_dir>/qm9/qm9.csv.gz                  130,831 molecules: smiles + 12 properties
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medgen.errors import InputFileError, MissingFileError
from medgen.utils.atomic import atomic_path, atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelSource:
    """A PyPI wheel that carries data files, pinned by version and sha256."""

    package: str
    version: str
    sha256: str
    licence: str

    @property
    def filename(self) -> str:
        return f"{self.package}-{self.version}-py3-none-any.whl"


MOSES = WheelSource(
    "molsets", "0.3.1", "7f4450e3ebecebe79c3a2a55950c93daddee071120daf64a163d03481e811d34", "MIT"
)
QM9 = WheelSource(
    "qm9pack", "1.0.3", "1d88c2988007c6778e717ee3224cf511bd60e10732ebe3b7ed500ea5af05c9f0", "MIT"
)
#: file in the unpacked folder -> member of the molsets wheel (copied byte for byte)
MOSES_FILES: dict[str, str] = {
    "train.csv.gz": "moses/dataset/data/train.csv.gz",
    "test.csv.gz": "moses/dataset/data/test.csv.gz",
    "test_scaffolds.csv.gz": "moses/dataset/data/test_scaffolds.csv.gz",
    "test_stats.npz": "moses/dataset/data/test_stats.npz",
    "test_scaffolds_stats.npz": "moses/dataset/data/test_scaffolds_stats.npz",
}
#: sha256 of the pickled statistics inside molsets 0.3.1 (sha256sum of the wheel's members)
MOSES_STATS_SHA256: dict[str, str] = {
    "test_stats.npz": "ded25073225a895d4ed17bf1d4223d27560e87ff4cb85786346ca1cc8efa03d3",
    "test_scaffolds_stats.npz": "7b7aba6c1474634a019bebf16f389d554cb9dd1021dfc8c1d1e54430a9f0e7f8",
}
MOSES_SPLITS = ("train", "test", "test_scaffolds")
QM9_PARTS = (
    "qm9pack/data/qm9_part1.csv",
    "qm9pack/data/qm9_part2.csv",
    "qm9pack/data/qm9_part3.csv",
)
#: QM9 columns kept (source name -> name written); energies in hartree, as in the source
QM9_COLUMNS: dict[str, str] = {
    "Index": "index",
    "SMILES": "smiles",
    "InChi": "inchi",
    "N_atoms": "n_atoms",
    "RotA_GHz": "rot_a_ghz",
    "RotB_GHz": "rot_b_ghz",
    "RotC_GHz": "rot_c_ghz",
    "Dipole_debye": "mu_debye",
    "Polarizability_bohr3": "alpha_bohr3",
    "HOMO_au": "homo_ha",
    "LUMO_au": "lumo_ha",
    "HOMO_LUMO_gap_au": "gap_ha",
    "R2_bohr2": "r2_bohr2",
    "ZPVE_au": "zpve_ha",
    "InternalEnergy_0K_au": "u0_ha",
    "InternalEnergy_298K_au": "u298_ha",
    "Enthalphy_298K_au": "h298_ha",
    "GibbsFreeEnergy_298K_au": "g298_ha",
    "Heatcapacity_Cv_cal_mol_K": "cv_cal_mol_k",
}


def default_data_dir() -> Path:
    """``$MEDGEN_DATA_DIR`` or ``./data`` (what ``paths.data_dir`` resolves to from the CLI)."""
    return Path(os.environ.get("MEDGEN_DATA_DIR") or Path.cwd() / "data")


def moses_path(split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of an unpacked MOSES file: ``split`` is ``train``, ``test`` or ``test_scaffolds``
    (the ``.csv.gz``), or ``test_stats`` / ``test_scaffolds_stats`` (the ``.npz``).

    Raises ``FileNotFoundError`` telling the user to run ``medgen data moses`` when it is missing.
    """
    names = {s: f"{s}.csv.gz" for s in MOSES_SPLITS}
    names |= {"test_stats": "test_stats.npz", "test_scaffolds_stats": "test_scaffolds_stats.npz"}
    if split not in names:
        raise ValueError(f"unknown MOSES split {split!r}; choose from {sorted(names)}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    path = root / "moses" / names[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"MOSES {split} not found at {path}; run `medgen data moses` "
            f"(or `medgen data moses paths.data_dir={root}`) first"
        )
    return path


def moses_stats_path(split: str = "test", data_dir: str | os.PathLike | None = None) -> Path:
    """Path of the converted (pickle-free) statistics of ``split`` (``test`` or
    ``test_scaffolds``); raises :class:`MissingFileError` telling to run ``medgen data moses``."""
    from medgen.chem.reference import PLAIN_SUFFIX

    if f"{split}_stats.npz" not in MOSES_STATS_SHA256:
        raise ValueError(f"no MOSES statistics for split {split!r}; choose test or test_scaffolds")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    path = root / "moses" / f"{split}_stats{PLAIN_SUFFIX}"
    if not path.is_file():
        raise MissingFileError(
            f"converted MOSES statistics not found at {path}; run `medgen data moses` "
            f"(or `medgen data moses paths.data_dir={root}`) to convert them"
        )
    return path


def qm9_path(data_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``qm9.csv.gz``; raises ``FileNotFoundError`` telling to run ``medgen data qm9``."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    path = root / "qm9" / "qm9.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"QM9 not found at {path}; run `medgen data qm9` first")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(source: WheelSource, wheel_dir: str | os.PathLike) -> Path:
    """The wheel file of ``source``: reused from ``$MEDGEN_WHEEL_DIR`` or ``wheel_dir``
    when present and intact, else ``pip download --no-deps`` into
    ``wheel_dir``. Raises ``RuntimeError`` with pip's output when the download fails."""
    wheel_dir = Path(wheel_dir)
    candidates = [Path(d) for d in (os.environ.get("MEDGEN_WHEEL_DIR"),) if d]
    candidates += [wheel_dir]
    for folder in candidates:
        path = folder / source.filename
        if path.is_file():
            if _sha256(path) == source.sha256:
                log.info("using %s", path)
                return path
            log.warning("%s does not match the pinned sha256; ignoring it", path)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{source.package}=={source.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec]
    cmd += ["-d", str(wheel_dir)]
    log.info("downloading %s with: %s", spec, " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    path = wheel_dir / source.filename
    if result.returncode != 0 or not path.is_file():
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stdout}\n{result.stderr}")
    if _sha256(path) != source.sha256:
        raise RuntimeError(f"{path}: sha256 differs from the pinned {source.sha256}")
    return path


def _done(marker: Path, outputs: list[Path]) -> bool:
    return marker.is_file() and all(p.is_file() for p in outputs)


def prepare_moses(data_dir: str | os.PathLike, wheel_dir: str | os.PathLike | None = None) -> dict:
    """Unpack the MOSES files into ``<data_dir>/moses`` and convert its statistics to plain
    arrays; each step is skipped when its outputs are there (a folder unpacked by an older
    medgen, without the converted statistics, only gets those)."""
    out = Path(data_dir) / "moses"
    outputs = [out / name for name in MOSES_FILES]
    marker = out / "SOURCE.json"
    written: list[Path] = []
    wheel = Path(MOSES.filename)
    if not _done(marker, outputs):
        wheel = fetch_wheel(MOSES, wheel_dir or Path(data_dir) / "wheels")
        with zipfile.ZipFile(wheel) as archive:
            for name, member in MOSES_FILES.items():
                atomic_write_bytes(out / name, archive.read(member))
                written.append(out / name)
                log.info("wrote %s (%.1f MB)", out / name, (out / name).stat().st_size / 1e6)
    for name, sha256 in MOSES_STATS_SHA256.items():
        target = _plain_stats(out / name)
        if not written and _stats_current(target):
            continue
        convert_moses_stats(out / name, sha256=sha256, out=target)
        written.append(target)
        log.info("converted %s into %s", out / name, target)
    if not written:
        log.info("MOSES already unpacked in %s: nothing to do", out)
        return {"dataset": "moses", "folder": str(out), "written": [], "skipped": True}
    files = [*MOSES_FILES, *(_plain_stats(out / n).name for n in MOSES_STATS_SHA256)]
    _write_source(marker, MOSES, wheel, files)
    return {"dataset": "moses", "folder": str(out), "written": [str(p) for p in written]}


def _plain_stats(raw: Path) -> Path:
    from medgen.chem.reference import PLAIN_SUFFIX

    return raw.with_name(raw.name.removesuffix(".npz") + PLAIN_SUFFIX)


def _stats_current(path: Path) -> bool:
    """Whether ``path`` holds converted statistics of the current layout version."""
    from medgen.chem.reference import STATS_VERSION

    try:
        with np.load(path, allow_pickle=False) as npz:
            return int(npz["version"]) == STATS_VERSION
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


# --------------------------------------------------------------------------------------------
# MOSES's pickled statistics -> plain arrays (sha256-checked first; no code is executed)


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _dtype(spec, align=False, copy=True):
    dtype = np.dtype(spec) if isinstance(spec, str | bytes) else None
    # object arrays ("O": the file's outer 0-d array) only hold what this unpickler rebuilt
    if dtype is None or dtype.kind not in "biufcSUO":  # no void or structured dtypes
        raise pickle.UnpicklingError(f"dtype {spec!r} is not a numeric, string or object dtype")
    return np.dtype(spec, align, copy)


def _latin1_encode(text, encoding="utf-8"):
    # protocol-2 pickles carry bytes (the arrays' buffers) as latin-1 text for _codecs.encode
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


#: the only globals MOSES's statistics pickle names, each mapped to a checked stand-in
_STATS_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "Counter"): Counter,
}


class _StatsUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, numbers, strings, numpy arrays and ``Counter``; any other global
    (the way a pickle runs code) raises ``UnpicklingError`` before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _STATS_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def read_moses_stats(path: str | os.PathLike, *, sha256: str) -> dict[str, Any]:
    """The dict pickled in MOSES's ``<split>_stats.npz`` at ``path``, whose bytes must hash to
    ``sha256`` (checked before anything is parsed). Raises :class:`InputFileError` naming the
    file on a digest mismatch, or when it names any global but numpy arrays and ``Counter``."""
    raw = Path(path).read_bytes()  # hashed and parsed from the same bytes
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise InputFileError(
            f"{path} has sha256 {digest}, not the pinned {sha256} of molsets "
            f"{MOSES.version}: refusing to read it; delete it and run `medgen data moses` again"
        )
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive, archive.open("stats.npy") as fh:
            version = fmt.read_magic(fh)
            read_header = (
                fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            )
            header = read_header(fh)
            if header != ((), False, np.dtype(object)):
                raise ValueError(f"stats.npy has header {header}, expected one object")
            stats = _StatsUnpickler(fh).load()  # a 0-d object array holding the dict
            stats = stats.item() if isinstance(stats, np.ndarray) and stats.shape == () else stats
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, AttributeError, EOFError,
            zipfile.BadZipFile) as err:  # fmt: skip
        raise InputFileError(f"{path} is not MOSES's statistics file: {err}") from err
    if not isinstance(stats, dict):
        raise InputFileError(f"{path}: the statistics are a {type(stats).__name__}, not a dict")
    return stats


def convert_moses_stats(
    path: str | os.PathLike, *, sha256: str, out: str | os.PathLike | None = None
) -> Path:
    """Convert MOSES's ``<split>_stats.npz`` (its bytes checked against ``sha256``) into the
    plain-array layout of :func:`medgen.chem.reference.save_stats`, written atomically to ``out``
    (default: ``<split>_stats.plain.npz`` beside it). Values are copied, not recomputed."""
    from medgen.chem.reference import PROPERTY_NAMES, ReferenceStats, save_stats

    path = Path(path)
    stats = read_moses_stats(path, sha256=sha256)
    try:
        reference = ReferenceStats(
            name=path.name.removesuffix(".npz").removesuffix("_stats"),
            fcd_mu=np.asarray(stats["FCD"]["mu"]),
            fcd_sigma=np.asarray(stats["FCD"]["sigma"]),
            fps=np.asarray(stats["SNN"]["fps"], dtype=np.uint8),
            fragments=dict(stats["Frag"]["frag"]),
            scaffolds=dict(stats["Scaf"]["scaf"]),
            properties={
                k: np.asarray(stats[k]["values"], dtype=np.float64) for k in PROPERTY_NAMES
            },
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InputFileError(f"{path}: unexpected MOSES statistics layout ({err!r})") from err
    return save_stats(reference, Path(out) if out else _plain_stats(path))


def prepare_qm9(data_dir: str | os.PathLike, wheel_dir: str | os.PathLike | None = None) -> dict:
    """Write ``<data_dir>/qm9/qm9.csv.gz`` (smiles + properties) from the qm9pack wheel."""
    import pandas as pd

    out = Path(data_dir) / "qm9"
    target = out / "qm9.csv.gz"
    marker = out / "SOURCE.json"
    if _done(marker, [target]):
        log.info("QM9 already unpacked in %s: nothing to do", out)
        return {"dataset": "qm9", "folder": str(out), "written": [], "skipped": True}
    wheel = fetch_wheel(QM9, wheel_dir or Path(data_dir) / "wheels")
    with zipfile.ZipFile(wheel) as archive:
        parts = []
        for member in QM9_PARTS:
            with archive.open(member) as fh:
                parts.append(pd.read_csv(fh, usecols=list(QM9_COLUMNS)))
    frame = pd.concat(parts, ignore_index=True).rename(columns=QM9_COLUMNS)
    frame = frame.sort_values("index", kind="mergesort")[list(QM9_COLUMNS.values())]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0})
    log.info("wrote %s (%d molecules, %.1f MB)", target, len(frame), target.stat().st_size / 1e6)
    _write_source(marker, QM9, wheel, [target.name])
    return {"dataset": "qm9", "folder": str(out), "written": [str(target)], "rows": len(frame)}


def qm9_stereo_path(data_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``qm9_stereo.csv.gz``; ``FileNotFoundError`` telling to run
    ``medgen data qm9_stereo``."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    path = root / "qm9_stereo" / "qm9_stereo.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"QM9 with stereo not found at {path}; run `medgen data "
                                "qm9_stereo` first")  # fmt: skip
    return path


def geometry_smiles(smiles: str, elements: Sequence[str], xyz: Sequence[Sequence[float]]) -> str:
    """``smiles`` with the stereochemistry of a 3D geometry (atoms ``elements``, coordinates
    ``xyz`` in Å, hydrogens included): connectivity perceived from the geometry (RDKit
    ``DetermineConnectivity``), bond orders taken from ``smiles`` as a template, stereo from the
    3D arrangement. Raises ``ValueError`` when the geometry's bonds are not those of ``smiles``."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import AllChem, rdDetermineBonds

    block = f"{len(elements)}\n\n" + "\n".join(
        f"{e} {x:.10f} {y:.10f} {z:.10f}" for e, (x, y, z) in zip(elements, xyz, strict=True)
    )
    with rdBase.BlockLogs():
        template = Chem.MolFromSmiles(smiles)
        mol = Chem.MolFromXYZBlock(block)
        if template is None or mol is None:
            raise ValueError("unreadable SMILES or coordinates")
        rdDetermineBonds.DetermineConnectivity(mol)
        try:
            mol = AllChem.AssignBondOrdersFromTemplate(Chem.AddHs(template), mol)
        except Exception as err:  # noqa: BLE001 - RDKit raises several kinds here
            raise ValueError(f"the geometry's bonds are not those of the SMILES ({err})") from err
        Chem.AssignStereochemistryFrom3D(mol)
        return Chem.MolToSmiles(Chem.RemoveHs(mol))


def _qm9_geometry_rows(rows: list[tuple[int, str, str, str]]) -> list[tuple[int, str, str, str]]:
    """Worker: ``(index, smiles from geometry or "", QM9 SMILES, reject reason or "")``."""
    import ast

    out = []
    for index, smiles, elements, coords in rows:
        try:
            # the coordinates are Mathematica-style lists ("1.", "2.3*^-6"): literals, never code
            xyz = ast.literal_eval(coords.replace("*^", "e"))
            out.append(
                (index, geometry_smiles(smiles, ast.literal_eval(elements), xyz), smiles, "")
            )
        except (ValueError, SyntaxError) as err:
            out.append((index, "", smiles, str(err).splitlines()[0][:200]))
    return out


def prepare_qm9_stereo(
    data_dir: str | os.PathLike, wheel_dir: str | os.PathLike | None = None, workers: int = 2
) -> dict:
    """Write ``<data_dir>/qm9_stereo/qm9_stereo.csv.gz`` (``index, smiles, smiles_qm9``): QM9 with
    the stereochemistry of each molecule's DFT geometry (QM9's own SMILES carry none), and
    ``rejects.csv`` for molecules whose geometry's bonds are not those of their SMILES (a
    different constitution after relaxation)."""
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd

    out = Path(data_dir) / "qm9_stereo"
    target, rejects = out / "qm9_stereo.csv.gz", out / "rejects.csv"
    marker = out / "SOURCE.json"
    if _done(marker, [target, rejects]):
        log.info("QM9 with stereo already in %s: nothing to do", out)
        return {"dataset": "qm9_stereo", "folder": str(out), "written": [], "skipped": True}
    wheel = fetch_wheel(QM9, wheel_dir or Path(data_dir) / "wheels")
    columns = ["Index", "SMILES", "Elements", "XYZ_Ang"]
    with zipfile.ZipFile(wheel) as archive:
        parts = []
        for member in QM9_PARTS:
            with archive.open(member) as fh:
                parts.append(pd.read_csv(fh, usecols=columns, dtype=str))
    frame = pd.concat(parts, ignore_index=True)
    frame["Index"] = frame["Index"].astype(int)
    frame = frame.sort_values("Index", kind="mergesort")
    rows = list(frame[columns].itertuples(index=False, name=None))
    chunks = [rows[i : i + 2000] for i in range(0, len(rows), 2000)]
    log.info("stereo of %d QM9 molecules from their geometry (%d processes)", len(rows), workers)
    results: list[tuple[int, str, str, str]] = []
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for k, done in enumerate(pool.map(_qm9_geometry_rows, chunks)):
            results.extend(done)
            if k % 10 == 0:
                log.info("%d / %d molecules", len(results), len(rows))
    kept = pd.DataFrame([(i, g, q) for i, g, q, r in results if not r],
                        columns=["index", "smiles", "smiles_qm9"])  # fmt: skip
    dropped = pd.DataFrame([(i, q, r) for i, _, q, r in results if r],
                           columns=["index", "smiles", "reason"])  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        kept.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0})
    with atomic_path(rejects) as tmp:
        dropped.to_csv(tmp, index=False)
    log.info("wrote %s (%d molecules; %d rejected, reasons in %s)", target, len(kept),
             len(dropped), rejects)  # fmt: skip
    _write_source(marker, QM9, wheel, [target.name, rejects.name])
    return {"dataset": "qm9_stereo", "folder": str(out), "written": [str(target), str(rejects)],
            "rows": len(kept), "rejected": len(dropped)}  # fmt: skip


def _write_source(marker: Path, source: WheelSource, wheel: Path, files: list[str]) -> None:
    record = {
        "package": source.package,
        "version": source.version,
        "wheel": wheel.name,
        "sha256": source.sha256,
        "licence": source.licence,
        "files": files,
    }
    atomic_write_json(marker, record)
    log.debug("source record %s", json.dumps(record))


PREPARERS = {"moses": prepare_moses, "qm9": prepare_qm9, "qm9_stereo": prepare_qm9_stereo}


def prepare(name: str, data_dir: str | os.PathLike, wheel_dir: str | os.PathLike | None = None):
    """Unpack data set ``name`` (``moses``, ``qm9`` or ``qm9_stereo``) into ``data_dir``."""
    if name not in PREPARERS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(PREPARERS)}")
    return PREPARERS[name](data_dir, wheel_dir)
