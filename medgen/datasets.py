"""Packaged molecule data sets, unpacked into the data folder by ``medgen data moses|qm9``.

The MOSES sets ship inside the ``molsets`` wheel and QM9 inside the ``qm9pack`` wheel (both MIT
licensed). The wheel is fetched with ``pip download --no-deps`` (the package registry; nothing else
is contacted), checked against its pinned sha256 and read as a zip file by path: the packages' code
is never imported or installed.

Layout written (``<data_dir>`` defaults to ``$MEDGEN_DATA_DIR`` or ``./data``)::

    <data_dir>/moses/train.csv.gz            1,584,663 SMILES (column SMILES)
    <data_dir>/moses/test.csv.gz               176,074
    <data_dir>/moses/test_scaffolds.csv.gz     176,225
    <data_dir>/moses/test_stats.npz            MOSES precomputed reference statistics (FCD mu/
    <data_dir>/moses/test_scaffolds_stats.npz  sigma, SNN fingerprints, Frag/Scaf counts, ...)
    <data_dir>/qm9/qm9.csv.gz                  130,831 molecules: smiles + 12 properties
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

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
    """Unpack the MOSES files into ``<data_dir>/moses`` (no-op when already there)."""
    out = Path(data_dir) / "moses"
    outputs = [out / name for name in MOSES_FILES]
    marker = out / "SOURCE.json"
    if _done(marker, outputs):
        log.info("MOSES already unpacked in %s: nothing to do", out)
        return {"dataset": "moses", "folder": str(out), "written": [], "skipped": True}
    wheel = fetch_wheel(MOSES, wheel_dir or Path(data_dir) / "wheels")
    written = []
    with zipfile.ZipFile(wheel) as archive:
        for name, member in MOSES_FILES.items():
            atomic_write_bytes(out / name, archive.read(member))
            written.append(out / name)
            log.info("wrote %s (%.1f MB)", out / name, (out / name).stat().st_size / 1e6)
    _write_source(marker, MOSES, wheel, [p.name for p in written])
    return {"dataset": "moses", "folder": str(out), "written": [str(p) for p in written]}


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


PREPARERS = {"moses": prepare_moses, "qm9": prepare_qm9}


def prepare(name: str, data_dir: str | os.PathLike, wheel_dir: str | os.PathLike | None = None):
    """Unpack data set ``name`` (``moses`` or ``qm9``) into ``data_dir``."""
    if name not in PREPARERS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(PREPARERS)}")
    return PREPARERS[name](data_dir, wheel_dir)
