"""Reader and writer for the IDX format (LeCun's MNIST files).

Why a hand-written reader: IDX is a 4-byte magic, ``ndim`` big-endian uint32 dims and raw
big-endian data, so numpy reads it in one ``frombuffer`` call. Doing it ourselves (instead of
going through torchvision or a Hub download) keeps the demo offline, never touches pickle, and
lets every failure say *which* file is broken and *how* (wrong magic, truncation, trailing bytes).

Layout::

    0x00 0x00 <type code> <ndim>   magic, read as one big-endian int (images: 2051, labels: 2049)
    ndim x uint32 (big-endian)     dims
    prod(dims) x itemsize bytes    data, big-endian, C order

``.gz`` files are recognised by their content (gzip magic ``1f 8b``), not only by their name,
so a renamed file still loads; the writer compresses when the name ends with ``.gz``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = [
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "IdxFormatError",
    "idx_magic",
    "read_idx",
    "write_idx",
]

# type code -> big-endian numpy dtype (the IDX spec's table).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# (kind, itemsize) -> type code, for the writer.
_CODE_FOR: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): code for code, dt in _IDX_DTYPES.items()}

IDX_IMAGES_MAGIC = 0x0803  # 2051: uint8, 3 dims (N, H, W)
IDX_LABELS_MAGIC = 0x0801  # 2049: uint8, 1 dim (N,)

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 16 << 20  # read 16 MiB at a time: bounded memory even if a corrupt header promises terabytes


class IdxFormatError(ValueError):
    """An IDX file is malformed; the message names the file and the problem."""


def idx_magic(dtype: np.dtype | str | type, ndim: int) -> int:
    """Return the magic number IDX uses for ``dtype`` and ``ndim`` (e.g. uint8, 3 -> 2051)."""
    dt = np.dtype(dtype)
    code = _CODE_FOR.get((dt.kind, dt.itemsize))
    if code is None:
        raise ValueError(f"dtype {dt} has no IDX type code; supported: {_supported()}")
    if not 0 <= ndim <= 255:
        raise ValueError(f"IDX stores ndim in one byte (0..255), got {ndim}")
    return (code << 8) | ndim


def _supported() -> str:
    return ", ".join(f"0x{code:02X}={dt.newbyteorder('=').name}" for code, dt in _IDX_DTYPES.items())


def _describe_magic(magic: int) -> str:
    """Human reading of a magic number, e.g. ``2051 (0x00000803: uint8, 3 dims)``."""
    hi, code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if hi != 0:
        what = "not an IDX magic: the first two bytes must be zero"
    elif code in _IDX_DTYPES:
        what = f"{_IDX_DTYPES[code].newbyteorder('=').name}, {ndim} dim{'s' if ndim != 1 else ''}"
        if magic == IDX_IMAGES_MAGIC:
            what += ", an images file"
        elif magic == IDX_LABELS_MAGIC:
            what += ", a labels file"
    else:
        what = f"unknown type code 0x{code:02X}"
    return f"{magic} (0x{magic:08X}: {what})"


def _open(path: Path) -> BinaryIO:
    """Open ``path`` for reading, transparently gunzipping when the content starts with 1f 8b."""
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == _GZIP_MAGIC
    # gzip.open by name (not fileobj=) so closing the GzipFile also closes the underlying file.
    return gzip.open(path, "rb") if is_gzip else open(path, "rb")


def _read_upto(f: BinaryIO, path: Path, limit: int, what: str) -> bytearray:
    """Read at most ``limit`` bytes, converting gzip/zlib failures into IdxFormatError.

    Reading stops at ``limit`` (callers pass ``expected + 1`` to spot trailing bytes), but a gzip
    stream is always asked for one more read past the data so its CRC trailer gets verified.
    """
    buf = bytearray()
    try:
        while len(buf) < limit:
            chunk = f.read(min(_CHUNK, limit - len(buf)))
            if not chunk:
                break
            buf += chunk
    except EOFError as e:  # gzip: "Compressed file ended before the end-of-stream marker was reached"
        raise IdxFormatError(f"{path}: truncated gzip stream while reading the {what} ({e})") from e
    except (gzip.BadGzipFile, zlib.error) as e:
        raise IdxFormatError(f"{path}: corrupt gzip stream while reading the {what} ({e})") from e
    return buf


def read_idx(path: str | os.PathLike[str], expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a native-endian numpy array of shape ``dims``.

    ``expect_magic`` (e.g. :data:`IDX_IMAGES_MAGIC`) guards against swapped files: a labels file
    passed where images are expected fails here with both magics spelled out, rather than later
    with a confusing reshape error.

    Raises ``FileNotFoundError`` for a missing file and :class:`IdxFormatError` for a wrong or
    unknown magic, a header or data section shorter than promised (plain or gzip), or trailing bytes.
    """
    path = Path(path)
    with _open(path) as f:
        head = bytes(_read_upto(f, path, 4, "magic"))
        if len(head) < 4:
            raise IdxFormatError(
                f"{path}: truncated header: expected a 4-byte magic, found {len(head)} bytes"
            )
        magic = int.from_bytes(head, "big")
        if expect_magic is not None and magic != expect_magic:
            raise IdxFormatError(
                f"{path}: wrong magic number: expected {_describe_magic(expect_magic)}, "
                f"found {_describe_magic(magic)}"
            )
        if head[:2] != b"\x00\x00":
            raise IdxFormatError(f"{path}: not an IDX file: magic {_describe_magic(magic)}")
        code, ndim = head[2], head[3]
        if code not in _IDX_DTYPES:
            raise IdxFormatError(f"{path}: unknown IDX type code 0x{code:02X}; supported: {_supported()}")
        dtype = _IDX_DTYPES[code]

        dims_raw = bytes(_read_upto(f, path, 4 * ndim, "header"))
        if len(dims_raw) < 4 * ndim:
            raise IdxFormatError(
                f"{path}: truncated header: magic promises {ndim} dims ({4 * ndim} bytes), "
                f"found {len(dims_raw)} bytes"
            )
        dims = struct.unpack(f">{ndim}I", dims_raw)

        expected = math.prod(dims) * dtype.itemsize
        buf = _read_upto(f, path, expected + 1, "data")
        if len(buf) < expected:
            raise IdxFormatError(
                f"{path}: truncated data: header promises shape {dims} of {dtype.newbyteorder('=').name} "
                f"= {expected} bytes, file holds {len(buf)}"
            )
        if len(buf) > expected:
            raise IdxFormatError(
                f"{path}: trailing garbage after the {expected} data bytes for shape {dims}; "
                "the file is longer than its header says"
            )
    arr = np.frombuffer(buf, dtype=dtype).reshape(dims)
    # Native byte order so downstream code (torch, arrow) needs no further conversion; a no-op for uint8.
    return arr.astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when the name ends with ``.gz``.

    Mainly for tests and tools that need small synthetic datasets. The gzip header carries no
    timestamp or file name, so the same array always gives the same bytes. Returns the path.
    """
    path = Path(path)
    arr = np.asarray(array)
    magic = idx_magic(arr.dtype, arr.ndim)
    if any(d >= 2**32 for d in arr.shape):
        raise ValueError(f"IDX dims are uint32; shape {arr.shape} does not fit")
    header = magic.to_bytes(4, "big") + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = np.ascontiguousarray(arr, dtype=_IDX_DTYPES[magic >> 8]).tobytes()
    with open(path, "wb") as raw:
        if path.name.endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                gz.write(header)
                gz.write(data)
        else:
            raw.write(header)
            raw.write(data)
    return path
