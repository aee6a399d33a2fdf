"""Reading TFRecord files inside a job without letting one bad record fail it.

``read_file`` yields every frame of a file as a ``RawRecord`` and every fault as a dead letter
(a dict with the file, record index, byte offset in the uncompressed stream, and reason). After a
record whose data checksum is wrong the reader carries on with the next frame, since its length
was intact; after a bad length checksum or a truncation there is no next frame to find, so the
rest of the file is one dead letter. Every frame read is counted once, either way, so a job can
check ``records in = written + dead-lettered``.
"""

from __future__ import annotations

from typing import Iterator, Union

from schemas import codec
from schemas.errors import RecordError
from schemas.tfrecord_io import RawRecord, scan


def dead_letter(path: str, index, offset, reason: str, stage: str) -> dict:
    return {"file": str(path), "index": None if index is None else int(index),
            "offset": None if offset is None else int(offset), "reason": reason, "stage": stage}


def letter_from_error(exc: RecordError, stage: str, path=None, index=None, offset=None) -> dict:
    exc = exc.located(path, index, offset)
    return dead_letter(exc.path or "", exc.index, exc.offset, exc.reason, stage)


def read_file(path: str) -> Iterator[Union[RawRecord, dict]]:
    """Every record of ``path`` as a RawRecord, or a dead-letter dict where it is damaged."""
    for item in scan(path):
        if isinstance(item, RecordError):
            yield letter_from_error(item, "read")
        else:
            yield item


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

