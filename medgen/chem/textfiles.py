"""Molecule text files as bytes: compressed files (``.gz``, ``.bz2``, ``.zst``) checked by their
magic number, decompression errors named with the position, binary and UTF-16 files refused up
front, and lines counted with undecodable bytes kept (``surrogateescape``) so that the row they
belong to can be rejected rather than lost.
"""

from __future__ import annotations

import bz2
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

from medgen.errors import InputFileError

#: compressed-file suffix -> (codec name in messages, magic bytes)
CODECS: dict[str, tuple[str, bytes]] = {
    ".gz": ("gzip", b"\x1f\x8b"),
    ".bz2": ("bz2", b"BZh"),
    ".zst": ("zstd", b"\x28\xb5\x2f\xfd"),
}
# what a truncated or corrupt stream raises while it is read (bz2: OSError "Invalid data stream")
GZIP_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


def codec(path: Path) -> str | None:
    """The compressed-file suffix of ``path`` (``.gz``, ``.bz2``, ``.zst``), or None."""
    name = path.name.lower()
    return next((suffix for suffix in CODECS if name.endswith(suffix)), None)


_SNIFF_BYTES = 8192
# bytes that do not occur in text (tab, newlines and form feed do)
_CONTROL_BYTES = bytes([*range(9), 11, *range(14, 32), 127])


def open_bytes(path: Path) -> io.BufferedIOBase:
    """``path`` opened for reading bytes, decompressed when its name ends in ``.gz``, ``.bz2`` or
    ``.zst`` (which its first bytes must then confirm). ``.zst`` needs the ``zstandard`` package."""
    suffix = codec(path)
    if suffix is None:
        return open(path, "rb")  # noqa: SIM115
    name, magic = CODECS[suffix]
    with open(path, "rb") as fh:
        head = fh.read(len(magic))
    if head != magic:
        raise InputFileError(
            f"{path}: the name ends in {suffix} but the file is not {name}-compressed "
            f"(it starts with {head!r}); remove {suffix} from the name or compress it"
        )
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    try:
        import zstandard
    except ImportError as err:
        raise InputFileError(f"{path}: reading .zst files needs `pip install zstandard`") from err
    return io.BufferedReader(_ZstdReader(zstandard, path))


class _ZstdReader(io.RawIOBase):
    """A zstd file (one or more frames) as a raw stream; a truncated frame is an ``EOFError``,
    corrupt data a ``zlib.error`` (the errors the other codecs raise)."""

    def __init__(self, zstandard, path: Path) -> None:
        self._zstd = zstandard
        self._raw = open(path, "rb")  # noqa: SIM115
        self._obj = zstandard.ZstdDecompressor().decompressobj()
        self._pending = b""
        self._started = False  # bytes of the current frame were fed

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            raw = self._raw.read(1 << 20)
            if not raw:
                if self._started and not self._obj.eof:
                    raise EOFError("the last zstd frame is incomplete")
                return 0
            self._feed(raw)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _feed(self, raw: bytes) -> None:
        while raw:
            if self._obj.eof:  # the next frame of a multi-frame file
                self._obj = self._zstd.ZstdDecompressor().decompressobj()
            self._started = True
            try:
                self._pending += self._obj.decompress(raw)
            except self._zstd.ZstdError as err:
                raise zlib.error(f"zstd: {err}") from err
            raw = self._obj.unused_data if self._obj.eof else b""

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def gzip_error(path: Path, err: BaseException, where: str) -> InputFileError:
    """The user's error for a decompression failure ``err`` (truncated or corrupt) at ``where``."""
    name = CODECS.get(codec(path) or ".gz", ("gzip", b""))[0]
    if isinstance(err, EOFError):
        return InputFileError(
            f"{path}: the {name} stream ended early ({where}): the file is truncated, e.g. by an "
            "interrupted download or copy; fetch it again"
        )
    return InputFileError(f"{path}: corrupt {name} data ({where}): {err}")


def check_text(path: Path, fmt: str) -> None:
    """Refuse a file that is not UTF-8 text at all (binary, UTF-16), from its first 8 KiB."""
    with open_bytes(path) as fh:
        try:
            head = fh.read(_SNIFF_BYTES)
        except GZIP_ERRORS as err:
            raise gzip_error(path, err, f"within its first {_SNIFF_BYTES} bytes") from err
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputFileError(
            f"{path}: the text is UTF-16 (it starts with a UTF-16 byte-order mark); "
            "save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"
        )
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if controls > max(8, 0.05 * len(head)):
        unpacked = " (after decompression)" if codec(path) else ""
        raise InputFileError(
            f"{path}: binary data, not a text .{fmt} file: {controls} control bytes such as NUL "
            f"in its first {len(head)} bytes{unpacked}; a .{fmt} file must be UTF-8 text"
        )


class Lines:
    """The physical lines of a binary stream as text, counted, with gzip errors named.

    A line that is not UTF-8 is decoded with ``surrogateescape`` and its number queued for
    :meth:`take_bad`. The byte-order mark of line 1 is dropped. With ``leading_comments``, the
    ``# `` lines at the top of the file (a medgen mark, :mod:`medgen.marking`) are skipped,
    still counted, and kept in ``comments``.
    """

    def __init__(self, path: Path, fh: io.BufferedIOBase, *, leading_comments: bool = False):
        self.path, self._fh = path, fh
        self.number = 0  # lines read so far
        self._bad: list[int] = []
        self._leading = leading_comments
        self.comments: list[str] = []

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        while True:
            text = self._next_line()
            if not (self._leading and text.startswith("# ")):
                self._leading = False
                return text
            self.comments.append(text.rstrip("\r\n"))
            if self._bad and self._bad[-1] == self.number:  # a skipped line rejects no row
                self._bad.pop()

    def _next_line(self) -> str:
        try:
            raw = self._fh.readline()
        except GZIP_ERRORS as err:
            raise gzip_error(self.path, err, f"after line {self.number}") from err
        if not raw:
            raise StopIteration
        self.number += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", "surrogateescape")
            self._bad.append(self.number)
        return text.removeprefix("\ufeff") if self.number == 1 else text

    def take_bad(self) -> str:
        """The read error for the lines read since the last call ("" when all were UTF-8)."""
        if not self._bad:
            return ""
        first, self._bad = self._bad[0], []
        return f"undecodable bytes (not UTF-8) at line {first}"


def escaped(text: str) -> str:
    """``text`` from a ``surrogateescape`` decode with its bad bytes as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class StopOnGzipError:
    """File wrapper for RDKit's supplier: a gzip error ends the stream and is kept in ``error``
    (raised inside RDKit it would become an opaque ``SystemError``)."""

    def __init__(self, fh: io.BufferedIOBase) -> None:
        self._fh = fh
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self._fh.read(size)
        except GZIP_ERRORS as err:
            self.error = err
            return b""


def guarded_lines(fh: io.BufferedIOBase, path: Path) -> Iterator[bytes]:
    """The raw lines of ``fh``; a gzip failure is an :class:`InputFileError` naming the line."""
    number = 0
    while True:
        try:
            raw = fh.readline()
        except GZIP_ERRORS as err:
            raise gzip_error(path, err, f"after line {number}") from err
        if not raw:
            return
        number += 1
        yield raw
