"""TFRecord files without TensorFlow: framing, CRC checks, gzip, atomic publish.

The framing is TensorFlow's: ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)``, little-endian. Files may be gzip-compressed (detected from the magic
bytes, so the name does not matter). Readers report the file, the record index and the byte offset
of the frame in the uncompressed stream for every fault, which is what dead-letter outputs need.

Gzip output is written with a zero timestamp and no file name, so the same records give the same
bytes on any machine. Gzip input is decompressed with ISA-L (``isal``), which reads any gzip
stream in about two thirds of zlib's CPU time.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import crc32c as _crc32c
from isal import igzip, isal_zlib

from schemas import codec, fs
from schemas.errors import RecordError

_MASK_DELTA = 0xA282EAD8
_GZIP_MAGIC = b"\x1f\x8b"
# zlib's and TensorFlow's default level: output within 2% of level 9 at about a third of its
# CPU time on image records (gzip.GzipFile would use 9). Fixed, so bytes stay deterministic.
COMPRESS_LEVEL = 6
# ``RecordWriter(fast=True)``: ISA-L's deflate at its best level, a quarter to a seventh of
# zlib-6's CPU time on image records for files about a quarter larger (reproductions/README.md).
FAST_COMPRESS_LEVEL = 3


def masked_crc(data: bytes) -> int:
    crc = _crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", masked_crc(length)), data,
                     struct.pack("<I", masked_crc(data))))


@dataclass(frozen=True)
class RawRecord:
    path: str
    index: int
    offset: int
    data: bytes


def _open_stream(raw) -> io.BufferedIOBase:
    head = raw.read(2)
    raw.seek(0)
    if head == _GZIP_MAGIC:
        return igzip.GzipFile(fileobj=raw, mode="rb")  # ISA-L: any gzip, in less CPU time
    return raw


def scan(path: str) -> Iterator[RawRecord | RecordError]:
    """Every frame of a file: a RawRecord, or a RecordError (with path, index and offset) for a
    damaged one. A frame whose data checksum is bad is skipped and scanning goes on, since its
    length was sound and the next frame starts where expected; after any other fault (missing
    file, truncation, bad length checksum, broken gzip stream) the rest of the file cannot be
    framed and scanning stops."""
    path = str(path)
    try:
        raw = fs.open_file(path, "rb")
    except FileNotFoundError:
        yield RecordError("no such file", path)
        return
    with raw:
        stream = _open_stream(raw)
        index, offset = 0, 0
        while True:
            try:
                header = stream.read(12)
                if not header:
                    return
                if len(header) < 12:
                    yield RecordError("truncated record header", path, index, offset)
                    return
                (length,) = struct.unpack("<Q", header[:8])
                (length_crc,) = struct.unpack("<I", header[8:])
                if masked_crc(header[:8]) != length_crc:
                    yield RecordError("bad length checksum (corrupted file); the rest of the file "
                                      "is unreadable", path, index, offset)
                    return
                body = stream.read(length + 4)
                if len(body) < length + 4:
                    yield RecordError(f"truncated record: expected {length} bytes of data",
                                      path, index, offset)
                    return
            except (EOFError, gzip.BadGzipFile, zlib.error, isal_zlib.error, OSError,
                    struct.error) as exc:
                yield RecordError(f"unreadable compressed stream ({exc})", path, index, offset)
                return
            data = body[:length]
            (data_crc,) = struct.unpack("<I", body[length:])
            if masked_crc(data) != data_crc:
                yield RecordError("bad data checksum (corrupted record)", path, index, offset)
            else:
                yield RawRecord(path, index, offset, data)
            index += 1
            offset += 12 + length + 4


def iter_raw(path: str) -> Iterator[RawRecord]:
    """Yield every record's bytes with its index and offset; RecordError on the first fault."""
    for item in scan(path):
        if isinstance(item, RecordError):
            raise item
        yield item


def read_records(path: str) -> Iterator[dict]:
    """Decoded, validated records of one file; errors name the file and record index."""
    for rec in iter_raw(path):
        try:
            yield codec.decode(rec.data)
        except RecordError as exc:
            raise exc.located(rec.path, rec.index, rec.offset) from None


def read_glob(patterns: str | Iterable[str]) -> Iterator[dict]:
    if isinstance(patterns, str):
        patterns = [patterns]
    for pattern in patterns:
        paths = fs.glob(pattern)
        if not paths:
            raise RecordError("no files match", pattern)
        for path in paths:
            yield from read_records(path)


class RecordWriter:
    """Write serialised records to one file, published atomically on a clean close.

    ``with RecordWriter(path) as w: w.write(codec.encode(rec))``. If the block raises, nothing is
    published and any earlier file at ``path`` is left as it was. ``fast``: gzip with ISA-L
    (``FAST_COMPRESS_LEVEL``) instead of zlib, for data rewritten often enough that CPU time
    counts for more than size.
    """

    def __init__(self, path: str, compress: bool = True, fast: bool = False):
        self.path = str(path)
        self.compress = compress
        self.fast = fast
        self.count = 0
        self._ctx = None
        self._stream = None

    def __enter__(self) -> "RecordWriter":
        self._ctx = fs.atomic_write(self.path, "wb")
        raw = self._ctx.__enter__()
        if not self.compress:
            self._stream = raw
        elif self.fast:
            self._stream = igzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0,
                                          compresslevel=FAST_COMPRESS_LEVEL)
        else:
            self._stream = gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0,
                                         compresslevel=COMPRESS_LEVEL)
        return self

    def write(self, data: bytes) -> None:
        self._stream.write(frame(data))
        self.count += 1

    def write_record(self, record: dict) -> None:
        self.write(codec.encode(record))

    def __exit__(self, exc_type, exc, tb):
        if self.compress:
            self._stream.close()
        return self._ctx.__exit__(exc_type, exc, tb)


def write_records(path: str, records: Iterable[dict], compress: bool = True) -> int:
    """Encode and write records to ``path`` atomically; returns how many were written."""
    with RecordWriter(path, compress) as w:
        for rec in records:
            w.write_record(rec)
    return w.count
