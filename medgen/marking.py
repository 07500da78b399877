"""The synthetic-data marking every medgen output carries, and the readers that find it again.

One provenance record (:func:`provenance`) says that a file is synthetic, which generator class and
checkpoint (sha256) made it and with which settings. It never holds an absolute path, a host name
or the user's home (:func:`check_shareable` lists what would leak). Each file kind carries it where
its own readers keep it:

============  ===========================================================================
NIfTI         ``descrip`` = ``medgen-synthetic <sha12>``, ``intent_name`` = ``medgen-synth``
              and a header extension (code 6, "comment") holding ``medgen-synthetic {json}``;
              the per-sample sidecar JSON beside the image holds the record under ``"marking"``;
              the voxels carry a 64-bit stamp (:func:`stamp_voxels`) for tools that write a
              fresh header (MONAI ``SaveImage``).
CSV / SMI     leading comment lines (:func:`header_lines`): ``# medgen-synthetic {json}`` first.
SDF           property ``medgen_synthetic``: the compact JSON on the first record, the short tag
              ``medgen-synthetic <sha12>`` on every other record (a record cut out of the file
              still says it is synthetic; the file does not repeat the record per molecule).
Parquet       schema metadata key ``b"medgen.synthetic"`` holding the JSON.
============  ===========================================================================

Readers return the record (plus ``found_in``: where the marks were seen) or None; a mark that only
survives in short form (``descrip``, ``intent_name``, an SDF short tag) reads back as a partial
record with ``checkpoint_sha12`` and ``"partial": True``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medgen.errors import InputFileError, MissingFileError

MARK = "medgen-synthetic"
SCHEMA = 1
KINDS = ("volume", "molecules")
SDF_TAG = "medgen_synthetic"
PARQUET_KEY = b"medgen.synthetic"
# NIfTI extension code 6 is "comment" (free text): every NIfTI reader keeps or ignores it, none
# tries to parse it as its own format (code 16, "pypickle", would be unpickled by some readers).
NIFTI_ECODE = 6
DESCRIP_BYTES = 80
# intent_name is 16 bytes, but SimpleITK keeps 15 of them: the short name survives it
INTENT_NAME = "medgen-synth"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
TEXT_SUFFIXES = (".csv", ".smi", ".txt", ".tsv")
# Comment lines read at the top of a text file before giving up on finding a mark.
_TEXT_HEAD_LINES = 50


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def compact(record: Mapping[str, Any]) -> str:
    """The record as one line of canonical JSON (sorted keys, no spaces)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def sha12(record: Mapping[str, Any]) -> str:
    """The first 12 hex digits of the record's checkpoint sha256 (``unknown`` when absent)."""
    return str(record.get("checkpoint_sha256") or "unknown")[:12]


def short_tag(record: Mapping[str, Any]) -> str:
    """``medgen-synthetic <sha12>``: the mark in 29 characters (NIfTI descrip, SDF records)."""
    return f"{MARK} {sha12(record)}"


def provenance(
    kind: str,
    *,
    checkpoint_sha256: str,
    generator: str,
    settings: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-able provenance record every synthetic output carries.

    Args:
        kind: ``volume`` or ``molecules``.
        checkpoint_sha256: sha256 hex digest of the checkpoint file (never its path).
        generator: the generator's class path (``medgen.imaging.diffusion.DiffusionModule``).
        settings: the sample settings (``SampleSettings.to_dict()``) and other plain values.
        extra: more plain fields (a data description, ``source_sha256``); they go at top level.

    Raises ``ValueError`` when ``kind`` is unknown or a value would leak a path or host name
    (:func:`check_shareable`): the caller passed something that must not leave the site.
    """
    from medgen import __version__

    if kind not in KINDS:
        raise ValueError(f"marking kind {kind!r} is not one of {KINDS}")
    record: dict[str, Any] = {
        "mark": MARK,
        "schema": SCHEMA,
        "synthetic": True,
        "kind": kind,
        "generator": str(generator),
        "checkpoint_sha256": str(checkpoint_sha256),
        "settings": _jsonable(dict(settings)),
        "medgen_version": __version__,
    }
    for key, value in (extra or {}).items():
        record.setdefault(str(key), _jsonable(value))
    assert_shareable(record, "marking record")
    return record


def is_mark(record: Any) -> bool:
    """Whether ``record`` is a medgen provenance record (a dict with ``mark == MARK``)."""
    return isinstance(record, Mapping) and record.get("mark") == MARK


# --- shareability ----------------------------------------------------------------------------

# An absolute POSIX path inside a string: a slash not preceded by a word character, followed by
# a path component ("1/2", "mm/s", "a/b" do not match), or a Windows drive path.
_ABS_PATH = re.compile(r"(?<![\w.~-])/[\w.-]+|\b[A-Za-z]:[\\/][\w.-]")


def _host_patterns() -> list[re.Pattern[str]]:
    names = set()
    for name in (socket.gethostname(), os.environ.get("HOSTNAME", "")):
        name = name.strip().lower()
        if name and name != "localhost":
            names.update({name, name.split(".")[0]})
    # a host name as a whole word ("vm" flags "data@vm", not "nvme"), case-insensitive
    return [re.compile(rf"(?<![a-z0-9]){re.escape(n)}(?![a-z0-9])", re.I) for n in sorted(names)]


def _walk(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            sub = f"{where}.{key}" if where else str(key)
            yield sub + " (key)", str(key)
            yield from _walk(item, sub)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]")
    elif isinstance(value, str | os.PathLike):
        yield where, os.fspath(value)


def check_shareable(record: Any) -> list[str]:
    """Every string in ``record`` (keys too, nested) that holds an absolute path, this host's name
    or the user's home folder, as ``"<where>: <why> <value>"`` lines; empty when shareable."""
    hosts = _host_patterns()
    home = str(Path.home())
    problems = []
    for where, text in _walk(record, ""):
        if _ABS_PATH.search(text) or text.startswith("~/") or text.startswith("file:"):
            problems.append(f"{where}: absolute path {text!r}")
        elif home not in ("/", "") and home in text:
            problems.append(f"{where}: home folder {text!r}")
        elif any(h.search(text) for h in hosts):
            problems.append(f"{where}: host name {text!r}")
    return problems


def assert_shareable(record: Any, what: str) -> None:
    """Raise ``ValueError`` (a bug: medgen put it there) listing what in ``record`` would leak."""
    problems = check_shareable(record)
    if problems:
        raise ValueError(f"{what} is not shareable: " + "; ".join(problems[:5]))


# --- text files (CSV, SMI) -------------------------------------------------------------------


def header_lines(record: Mapping[str, Any]) -> list[str]:
    """Comment lines for the top of a CSV/SMI file: ``# medgen-synthetic {json}`` first, then a
    sentence for people. Each line starts with ``# `` and has no newline.

    medgen's readers (:func:`medgen.chem.readers.read_molecules`) skip them. With pandas, skip
    them by count, ``pandas.read_csv(path, skiprows=header_line_count(path))``: never with
    ``comment="#"``, which also cuts every SMILES at its first triple bond (``C#N`` reads as
    ``C``)."""
    kind, version = record.get("kind", "data"), record.get("medgen_version", "")
    return [
        f"# {MARK} {compact(record)}",
        f"# synthetic {kind} generated by medgen {version} from checkpoint sha256 "
        f"{sha12(record)}; not real data, research use only",
    ]


def header_line_count(path: str | os.PathLike) -> int:
    """How many ``#`` comment lines open a text file (a medgen mark: 2; a plain file: 0): the
    ``skiprows`` of ``pandas.read_csv`` for a marked CSV (gzipped too)."""
    count = 0
    with _open_text(Path(path)) as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            count += 1
    return count


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _parse_tagged(text: str) -> dict[str, Any] | None:
    """``medgen-synthetic {json}`` -> the record; ``medgen-synthetic <sha12>`` -> a partial one."""
    text = text.strip()
    if not text.startswith(MARK):
        return None
    rest = text[len(MARK) :].strip()
    if rest.startswith("{"):
        try:
            record = json.loads(rest)
        except json.JSONDecodeError:
            record = None
        if is_mark(record):
            return dict(record)
        # a damaged record still says synthetic; its first 12 characters are no checkpoint hash
        return {"mark": MARK, "synthetic": True, "partial": True}
    return {"mark": MARK, "synthetic": True, "partial": True, "checkpoint_sha12": rest[:12]}


def read_text_mark(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record in a text file's leading ``#`` comment lines, or None."""
    path = Path(path)
    with _open_text(path) as fh:
        for _, line in zip(range(_TEXT_HEAD_LINES), fh, strict=False):
            if not line.startswith("#"):
                break
            record = _parse_tagged(line.lstrip("#"))
            if record is not None:
                return {**record, "found_in": ["text header"]}
    return None


# --- SDF -------------------------------------------------------------------------------------


def sdf_value(record: Mapping[str, Any], *, first: bool) -> str:
    """The ``SDF_TAG`` property value: the full compact JSON on the first record, else the short
    tag."""
    return f"{MARK} {compact(record)}" if first else short_tag(record)


def read_sdf_mark(path: str | os.PathLike) -> dict[str, Any] | None:
    """The first ``medgen_synthetic`` property value in an SDF file (full or short), or None.

    Reads the text directly (no RDKit parse): the property is a ``>  <medgen_synthetic>`` line
    followed by its value line."""
    path = Path(path)
    tag = re.compile(r"^>.*<" + re.escape(SDF_TAG) + r">")
    with _open_text(path) as fh:
        want_value = False
        for line in fh:
            if want_value:
                record = _parse_tagged(line)
                if record is not None:
                    return {**record, "found_in": ["sdf property"]}
                want_value = False
            elif tag.match(line):
                want_value = True
    return None


# --- Parquet ---------------------------------------------------------------------------------


def parquet_metadata(record: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Schema metadata to merge into a pyarrow table (``table.replace_schema_metadata``)."""
    return {PARQUET_KEY: compact(record).encode()}


def read_parquet_mark(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record in a Parquet file's schema metadata, or None."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError kinds
        raise InputFileError(f"{path}: not a readable Parquet file ({exc})") from exc
    raw = metadata.get(PARQUET_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return {**record, "found_in": ["parquet metadata"]} if is_mark(record) else None


# --- NIfTI -----------------------------------------------------------------------------------


def mark_nifti(img: Any, record: Mapping[str, Any]) -> Any:
    """Mark a ``nibabel.Nifti1Image`` in place (and return it): ``descrip``, ``intent_name`` and a
    comment extension with the JSON record (an earlier medgen extension is replaced). The intent
    code (e.g. a label map's) is kept."""
    import nibabel as nib

    header = img.header
    header["descrip"] = short_tag(record).encode()[: DESCRIP_BYTES - 1]
    header["intent_name"] = INTENT_NAME.encode()
    extensions = header.extensions
    for ext in [e for e in extensions if _extension_record(e) is not None]:
        extensions.remove(ext)
    extensions.append(nib.nifti1.Nifti1Extension(NIFTI_ECODE, f"{MARK} {compact(record)}".encode()))
    return img


def _extension_record(ext: Any) -> dict[str, Any] | None:
    if ext.get_code() != NIFTI_ECODE:
        return None
    content = ext.get_content()
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
    record = _parse_tagged(text.rstrip("\x00"))
    return record if record is not None and not record.get("partial") else None


def nifti_sidecar(path: str | os.PathLike) -> Path:
    """The sidecar JSON beside a NIfTI file (``sample_00042.nii.gz`` -> ``sample_00042.json``)."""
    path = Path(path)
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    return path.with_name(stem + ".json")


def _sidecar_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if is_mark(data):
        return dict(data)
    if isinstance(data, Mapping):
        for value in data.values():
            if is_mark(value):
                return dict(value)
    return None


def read_nifti_mark(path: str | os.PathLike) -> dict[str, Any] | None:
    """What survived of the marking in a NIfTI file: the extension's record first, then the
    ``descrip`` / ``intent_name`` short marks, then the sidecar JSON beside the file; None when
    there is no mark at all. ``found_in`` lists every place a mark was seen."""
    import nibabel as nib

    path = Path(path)
    try:
        img: Any = nib.load(path)
        header = img.header
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, gzip errors
        raise InputFileError(f"{path}: not a readable NIfTI file ({exc})") from exc
    found: list[str] = []
    full: dict[str, Any] | None = None
    for ext in getattr(header, "extensions", []):
        if (record := _extension_record(ext)) is not None:
            full, found = record, ["extension"]
            break
    descrip = bytes(header["descrip"].item()).decode("latin-1").rstrip("\x00").strip()
    partial = _parse_tagged(descrip)
    if partial is not None:
        found.append("descrip")
    if bytes(header["intent_name"].item()).decode("latin-1").rstrip("\x00") == INTENT_NAME:
        found.append("intent_name")
        partial = partial or {"mark": MARK, "synthetic": True, "partial": True}
    sidecar = nifti_sidecar(path)
    if sidecar.is_file() and (record := _sidecar_record(sidecar)) is not None:
        found.append("sidecar")
        full = full or record
    try:
        stamp = read_voxel_mark(np.asanyarray(img.dataobj))
    except Exception:  # a truncated data block: the header marks still count
        stamp = None
    if stamp is not None:
        found.append("voxels")
    if full is not None:
        return {**full, "found_in": found}
    if partial is not None or stamp is not None:
        return {**(partial or {}), **(stamp or {}), "found_in": found}
    return None


# --- voxels --------------------------------------------------------------------------------

# The stamp: 32 fixed bits ("mgSY") then the first 32 bits of the checkpoint sha256, one bit in
# the lowest bit of each of the first 64 voxels (C order of channel 0): the parity of an integer
# voxel (at most 1 HU of change, in a corner that is air in CT) or the last mantissa bit of a
# float32 one (one ulp, a relative change of 1e-7), always towards the middle of the value
# range. It survives any tool that keeps the voxel array and its order (MONAI LoadImage ->
# SaveImage writes float32 of the same values), not resampling, reorientation or lossy
# conversion. A random or constant volume matches the 32 fixed bits with
# probability 2^-32.
_STAMP_MAGIC = b"mgSY"
STAMP_BITS = 64


def _stamp_bits(record: Mapping[str, Any]) -> np.ndarray:
    sha = str(record.get("checkpoint_sha256") or "")
    try:
        payload = bytes.fromhex(sha[:8].ljust(8, "0"))
    except ValueError:
        payload = b"\0\0\0\0"
    return np.unpackbits(np.frombuffer(_STAMP_MAGIC + payload, dtype=np.uint8))


def stamp_voxels(data: np.ndarray, record: Mapping[str, Any]) -> np.ndarray:
    """A copy of ``data`` (``(D, H, W)`` or ``(D, H, W, C)``, integer or float32) with the stamp
    in its first 64 voxels (channel 0); arrays under 64 voxels or of other dtypes are returned
    unchanged."""
    out = np.array(data, copy=True)
    first = np.ascontiguousarray(out[..., 0] if out.ndim == 4 else out)
    flat = first.reshape(-1)[:STAMP_BITS]  # a view of ``first``
    if flat.size < STAMP_BITS:
        return out
    bits = _stamp_bits(record)
    # a voxel whose lowest bit is wrong moves one step (1, or one float32 ulp) towards the
    # middle of the volume's value range, so the stamp never leaves that range (a CT window)
    mid = (float(first.min()) + float(first.max())) / 2.0
    down = flat.astype(np.float64) > mid
    if np.issubdtype(out.dtype, np.integer):
        wrong = (flat & 1).astype(np.uint8) != bits
        flat[wrong & down] -= 1
        flat[wrong & ~down] += 1
    elif out.dtype == np.float32:
        wrong = (flat.view(np.uint32) & 1).astype(np.uint8) != bits
        target = np.where(down, -np.inf, np.inf).astype(np.float32)
        flat[wrong] = np.nextafter(flat[wrong], target[wrong])
    else:
        return out
    if out.ndim == 4:
        out[..., 0] = first
    else:
        out = first
    return out


def read_voxel_mark(data: np.ndarray) -> dict[str, Any] | None:
    """The partial record a stamp in ``data`` (as :func:`stamp_voxels` wrote it, read back as
    any dtype) holds, or None."""
    arr = np.asarray(data)
    first = arr[..., 0] if arr.ndim == 4 else arr
    flat = np.ascontiguousarray(first).reshape(-1)[:STAMP_BITS]
    if flat.size < STAMP_BITS:
        return None
    if np.issubdtype(flat.dtype, np.integer):
        bits = (flat & 1).astype(np.uint8)
    elif np.all(np.isfinite(flat)) and np.all(flat == np.round(flat)):
        bits = (np.round(flat).astype(np.int64) & 1).astype(np.uint8)
    else:
        bits = (flat.astype(np.float32).view(np.uint32) & 1).astype(np.uint8)
    raw = np.packbits(bits).tobytes()
    if raw[:4] != _STAMP_MAGIC:
        return None
    return {"mark": MARK, "synthetic": True, "partial": True, "checkpoint_sha8": raw[4:].hex()}


# --- release options -------------------------------------------------------------------------

# the key of ``SampleSettings.extra`` that carries the release options from ``medgen sample`` to
# a cohort: local settings (paths among them) that are never written as sample settings
RELEASE_KEY = "release"


@dataclass(frozen=True)
class ReleaseOptions:
    """What ``medgen sample`` asks of an export beyond drawing (see ``docs/release.md``).

    Attributes:
        share: write only what may leave the site (no host, no absolute path) and check every
            JSON written for leaks.
        audit: run the nearest-training-neighbour check at finalize (volume models).
        allow_memorized: finalize even when the audit flags samples (the card says so).
        audit_train: training data for the audit when the checkpoint's own cannot be found (a
            training run folder, a NIfTI folder, a datalist or a data config name); local.
        evaluation: an evaluation report (``evaluation.json``) to quote in the card; local.
        checkpoint: the checkpoint file (local: never written, only its sha256 is).
        generator: the generator's class path.
    """

    share: bool = False
    audit: bool = False
    allow_memorized: bool = False
    audit_train: str | None = None
    evaluation: str | None = None
    checkpoint: str | None = None
    generator: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def checked(self) -> ReleaseOptions:
        """These options after the checks ``medgen sample`` and ``export_volumes`` make before
        any output exists: ``allow_memorized`` needs ``audit``, ``evaluation`` names a file (a
        ``UserError`` naming the key otherwise). ``audit_train`` is checked by the cohort."""
        from medgen.errors import ConfigError

        if self.allow_memorized and not self.audit:
            raise ConfigError("allow_memorized", True, "false unless audit=true")
        if self.evaluation is not None and not Path(self.evaluation).expanduser().is_file():
            raise MissingFileError(f"evaluation={self.evaluation}: no such evaluation.json")
        return self


def release_options(settings: Any) -> ReleaseOptions:
    """The :class:`ReleaseOptions` a ``SampleSettings`` carries in ``extra["release"]`` (the
    defaults when it carries none)."""
    extra = getattr(settings, "extra", None) or {}
    values = extra.get(RELEASE_KEY) or {}
    return ReleaseOptions(**values) if isinstance(values, Mapping) else ReleaseOptions()


def with_release(settings: Any, options: ReleaseOptions) -> Any:
    """``settings`` (a ``SampleSettings``) carrying ``options``."""
    return settings.replace(extra={**settings.extra, RELEASE_KEY: options.to_dict()})


def public_settings(settings: Any) -> dict[str, Any]:
    """``settings.to_dict()`` without the release options (local paths): what outputs record."""
    d = settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)
    extra = {k: v for k, v in (d.get("extra") or {}).items() if k != RELEASE_KEY}
    return {**d, "extra": extra}


# --- any file --------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, ".sdf.gz", ".csv.gz", ".smi.gz"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


SUPPORTED = (*NIFTI_SUFFIXES, *TEXT_SUFFIXES, ".sdf", ".parquet", ".json")


def read_mark(path: str | os.PathLike) -> dict[str, Any] | None:
    """The marking of any file medgen writes (chosen by suffix: .nii/.nii.gz, .csv/.smi/.txt/.tsv
    (optionally .gz), .sdf, .parquet, .json), or None when it carries none.

    Raises :class:`~medgen.errors.MissingFileError` for a missing file and
    :class:`~medgen.errors.InputFileError` for a folder, an unreadable file (a truncated or
    corrupt ``.gz`` among them) or another suffix."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"{path}: a folder, not a file; name one file of it")
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    suffix = _suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            return read_nifti_mark(path)
        if suffix in TEXT_SUFFIXES or suffix in (".csv.gz", ".smi.gz"):
            return read_text_mark(path)
        if suffix in (".sdf", ".sdf.gz"):
            return read_sdf_mark(path)
        if suffix == ".parquet":
            return read_parquet_mark(path)
        if suffix == ".json":
            record = _sidecar_record(path)
            return None if record is None else {**record, "found_in": ["json"]}
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        if path.name.lower().endswith(".gz"):
            from medgen.chem.textfiles import gzip_error

            raise gzip_error(path, exc, "while its marking was read") from exc
        raise InputFileError(f"{path}: cannot read ({exc})") from exc
    except UnicodeError as exc:
        raise InputFileError(f"{path}: cannot read ({exc})") from exc
    raise InputFileError(f"{path}: cannot read a marking from {suffix!r}; supported: {SUPPORTED}")
