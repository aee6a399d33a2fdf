"""Reading TFRecord files inside a job without letting one bad record fail it.

``read_file`` yields every frame of a file as a ``RawRecord`` and every fault as a dead letter
(a dict with the file, record index, byte offset in the uncompressed stream, and reason). After a
record whose data checksum is wrong the reader carries on with the next frame, since its length
was intact; after a bad length checksum or a truncation there is no next frame to find, so the
rest of the file is one dead letter. Every frame read is counted once, either way.

``read_counted`` also knows how many records the file should hold (from the upstream manifest or
the collect shard's name): each dead letter says how many input records it accounts for
(``records``), the unreadable remainder of a file counting as what it held, and a file that ends
early (truncated, emptied, replaced) gets a dead letter for what is missing. So a job can check
``records in = written + dead-lettered`` against a number it did not count itself.
"""

from __future__ import annotations

from typing import Iterator, Optional, Union

from schemas import codec, fs
from schemas.errors import RecordError
from schemas.tfrecord_io import RawRecord, scan


def dead_letter(path: str, index, offset, reason: str, stage: str, records: int = 1) -> dict:
    return {"file": str(path), "index": None if index is None else int(index),
            "offset": None if offset is None else int(offset), "reason": reason, "stage": stage,
            "records": int(records)}


def letter_from_error(exc: RecordError, stage: str, path=None, index=None, offset=None,
                      records: int = 1) -> dict:
    exc = exc.located(path, index, offset)
    return dead_letter(exc.path or "", exc.index, exc.offset, exc.reason, stage, records)


def dead_records(letters) -> int:
    """Input records a list of dead letters accounts for."""
    return sum(int(d.get("records", 1)) for d in letters)


def read_file(path: str) -> Iterator[Union[RawRecord, dict]]:
    """Every record of ``path`` as a RawRecord, or a dead-letter dict where it is damaged."""
    for item in scan(path):
        if isinstance(item, RecordError):
            yield letter_from_error(item, "read")
        else:
            yield item


def read_counted(path: str, expected: Optional[int] = None
                 ) -> Iterator[Union[RawRecord, dict]]:
    """``read_file`` with accounting: every input record of ``path`` is yielded as a RawRecord
    or covered by a dead letter's ``records``.

    ``expected``: how many records the file holds, if known. A fault after which the file
    cannot be read on covers the records from there to ``expected`` (one when unknown); a file
    that ends cleanly before ``expected`` gets a letter for the missing records, and an empty
    file (no bytes at all: never one of our writers' outputs) a letter even when the count is
    unknown.
    """
    pending, frames, end = None, 0, 0
    for item in scan(path):
        if pending is not None:  # the scan went on: that fault was one record's
            yield letter_from_error(pending, "read")
            pending = None
        if isinstance(item, RecordError):
            pending = item
        else:
            end = item.offset + 12 + len(item.data)
            yield item
        frames += 1
    if pending is not None:  # the last fault ended the scan: the rest of the file is lost
        start = pending.index if pending.index is not None else frames - 1
        rest = expected - start if expected is not None else 1
        yield letter_from_error(pending, "read", records=max(rest, 1))
        return
    if expected is not None and frames < expected:
        what = "is empty" if frames == 0 else f"ends after {frames} records"
        yield dead_letter(path, frames, end, f"file {what} but should hold {expected} "
                          "(truncated or replaced?)", "read", expected - frames)
    elif expected is None and frames == 0 and _empty(path):
        yield dead_letter(path, 0, 0, "empty file (0 bytes): not a TFRecord file", "read", 1)


def _empty(path: str) -> bool:
    try:
        return fs.size(path) == 0
    except (OSError, FileNotFoundError):
        return False


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



def read_episodes(path: str, expected: Optional[int] = None
                  ) -> Iterator[tuple[Optional[dict], Optional[RawRecord], Optional[dict]]]:
    """``read_counted`` decoded as episodes: ``(episode, raw, None)`` for each readable one,
    ``(None, None, dead letter)`` where the file is damaged or a record is not an episode."""
    for raw in read_counted(path, expected):
        if isinstance(raw, dict):
            yield None, None, raw
            continue
        try:
            yield decode_as(raw, ("episode",)), raw, None
        except RecordError as exc:
            yield None, None, letter_from_error(exc, "decode")
