"""Reading TFRecord files inside a job without letting one bad record fail it.

``read_file`` yields every frame of a file as a ``RawRecord`` and every fault as a dead letter
(a dict with the file, record index, byte offset in the uncompressed stream, and reason). After a
record whose data checksum is wrong the reader carries on with the next frame, since its length
was intact; after a bad length checksum or a truncation there is no next frame to find, so the
rest of the file is one dead letter. Every frame read is counted once, either way, so a job can
check ``records in = written + dead-lettered``.
"""

from __future__ import annotations

import struct
from typing import Iterator, Union

from schemas import codec, fs
from schemas.errors import RecordError
from schemas.tfrecord_io import RawRecord, masked_crc

_GZIP_MAGIC = b"\x1f\x8b"


def dead_letter(path: str, index, offset, reason: str, stage: str) -> dict:
    return {"file": str(path), "index": None if index is None else int(index),
            "offset": None if offset is None else int(offset), "reason": reason, "stage": stage}


def letter_from_error(exc: RecordError, stage: str, path=None, index=None, offset=None) -> dict:
    exc = exc.located(path, index, offset)
    return dead_letter(exc.path or "", exc.index, exc.offset, exc.reason, stage)


def _open(path: str):
    import gzip

    raw = fs.open_file(path, "rb")
    head = raw.read(2)
    raw.seek(0)
    return (gzip.GzipFile(fileobj=raw, mode="rb") if head == _GZIP_MAGIC else raw), raw


def read_file(path: str) -> Iterator[Union[RawRecord, dict]]:
    """Every record of ``path`` as a RawRecord, or a dead-letter dict where it is damaged."""
    import gzip
    import zlib

    try:
        stream, raw = _open(path)
    except FileNotFoundError:
        yield dead_letter(path, None, None, "no such file", "read")
        return
    with raw:
        index, offset = 0, 0
        while True:
            try:
                header = stream.read(12)
                if not header:
                    return
                if len(header) < 12:
                    yield dead_letter(path, index, offset, "truncated record header", "read")
                    return
                length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
                if masked_crc(length_bytes) != length_crc:
                    yield dead_letter(path, index, offset, "bad length checksum (corrupted "
                                      "file); the rest of the file is unreadable", "read")
                    return
                (length,) = struct.unpack("<Q", length_bytes)
                body = stream.read(length + 4)
                if len(body) < length + 4:
                    yield dead_letter(path, index, offset,
                                      f"truncated record: expected {length} bytes of data", "read")
                    return
                data, (data_crc,) = body[:length], struct.unpack("<I", body[length:])
            except (EOFError, OSError, zlib.error, gzip.BadGzipFile, struct.error) as exc:
                yield dead_letter(path, index, offset,
                                  f"unreadable compressed stream ({exc})", "read")
                return
            if masked_crc(data) != data_crc:
                yield dead_letter(path, index, offset, "bad data checksum (corrupted record)",
                                  "read")
            else:
                yield RawRecord(path, index, offset, data)
            index += 1
            offset += 16 + length


def decode_as(raw: RawRecord, kinds: tuple) -> dict:
    """Decode a frame and check its kind; RecordError located at the frame otherwise."""
    try:
        record = codec.decode(raw.data)
    except RecordError as exc:
        raise exc.located(raw.path, raw.index, raw.offset) from None
    if record["kind"] not in kinds:
        raise RecordError(f"expected a {' or '.join(kinds)} record, found {record['kind']}",
                          raw.path, raw.index, raw.offset)
    return record

