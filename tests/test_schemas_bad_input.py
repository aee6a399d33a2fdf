"""Each kind of bad record gets a one-line error naming the file, the record and the fault."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from schemas import codec, example_proto, fake, tfrecord_io
from schemas.errors import RecordError


def _write(tmp_path, recs, name="bad.tfrecord.gz"):
    path = str(tmp_path / name)
    tfrecord_io.write_records(path, recs)
    return path


def _raw_frames(payloads):
    return b"".join(tfrecord_io.frame(p) for p in payloads)


def test_truncated_file_names_file_and_record(tmp_path):
    good = [codec.encode(r) for r in fake.fake_records("transition", 3, image_size=8)]
    path = tmp_path / "trunc.tfrecord"
    data = _raw_frames(good)
    path.write_bytes(data[:-10])
    with pytest.raises(RecordError) as err:
        list(tfrecord_io.read_records(str(path)))
    msg = str(err.value)
    assert str(path) in msg and "record 2" in msg and "truncated" in msg
    assert err.value.index == 2 and err.value.offset == 2 * (len(good[0]) + 16)


def test_truncated_gzip_stream(tmp_path):
    path = _write(tmp_path, fake.fake_records("transition", 20, image_size=16))
    data = open(path, "rb").read()
    cut = tmp_path / "cut.tfrecord.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordError, match=r"cut\.tfrecord\.gz, record \d+"):
        list(tfrecord_io.read_records(str(cut)))


def test_corrupted_byte_fails_the_data_checksum(tmp_path):
    good = [codec.encode(r) for r in fake.fake_records("transition", 2, image_size=8)]
    data = bytearray(_raw_frames(good))
    data[len(good[0]) + 16 + 40] ^= 0xFF  # a byte inside record 1's payload
    path = tmp_path / "flip.tfrecord"
    path.write_bytes(bytes(data))
    with pytest.raises(RecordError, match=r"flip\.tfrecord, record 1, offset \d+: bad data checksum"):
        list(tfrecord_io.read_records(str(path)))


def test_unknown_schema_version(tmp_path):
    msg = example_proto.Example.FromString(
        codec.encode(fake.fake_record("transition", image_size=8)))
    msg.features.feature["schema_version"].int64_list.value[0] = 99
    path = tmp_path / "v99.tfrecord"
    path.write_bytes(_raw_frames([msg.SerializeToString()]))
    with pytest.raises(RecordError, match=r"v99\.tfrecord, record 0.*schema version 99"):
        list(tfrecord_io.read_records(str(path)))


def test_version_1_records_are_refused_with_what_to_do(tmp_path):
    # Version 1 observations had no gripper_opening: such an episode, as it was written then.
    rec = fake.fake_record("episode", image_size=8, num_steps=2)
    msg = example_proto.SequenceExample.FromString(codec.encode(rec))
    msg.context.feature["schema_version"].int64_list.value[0] = 1
    del msg.feature_lists.feature_list["observation/gripper_opening"]
    path = tmp_path / "old.tfrecord"
    path.write_bytes(_raw_frames([msg.SerializeToString()]))
    with pytest.raises(RecordError, match=r"old\.tfrecord, record 0.*schema version 1 .*"
                                          r"lack gripper_opening.*collect the episodes again"):
        list(tfrecord_io.read_records(str(path)))


def test_wrong_image_shape_is_refused_on_write_and_on_read(tmp_path):
    rec = fake.fake_record("transition", image_size=8)
    rec["observation/image"] = np.zeros((8, 9, 3), np.uint8)
    with pytest.raises(RecordError, match=r"'observation/image'.*\(8, 9, 3\).*\(8, 8, 3\)"):
        codec.encode(rec)
    msg = example_proto.Example.FromString(
        codec.encode(fake.fake_record("transition", image_size=8)))
    msg.features.feature["image_shape"].int64_list.value[1] = 7
    path = tmp_path / "shape.tfrecord"
    path.write_bytes(_raw_frames([msg.SerializeToString()]))
    with pytest.raises(RecordError, match=r"shape\.tfrecord, record 0.*192 bytes do not make an image"):
        list(tfrecord_io.read_records(str(path)))


def test_nan_action_is_refused(tmp_path):
    rec = fake.fake_record("transition", image_size=8)
    rec["action"] = rec["action"].copy()
    rec["action"][3] = np.nan
    with pytest.raises(RecordError, match=r"field 'action'.*NaN"):
        codec.encode(rec)
    good = fake.fake_record("episode", image_size=8, num_steps=3)
    good["action"][1] = np.full(8, np.nan, np.float32)
    with pytest.raises(RecordError, match=r"field 'action' at step 1.*NaN"):
        codec.encode(good)


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = _write(tmp_path, fake.fake_records("transition", 2, image_size=8), "keep.tfrecord.gz")
    before = open(path, "rb").read()
    bad = fake.fake_record("transition", image_size=8)
    bad["reward"] = np.float32(np.inf)
    with pytest.raises(RecordError):
        tfrecord_io.write_records(path, fake.fake_records("transition", 3, image_size=8) + [bad])
    assert open(path, "rb").read() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tfrecord.gz"]


def test_not_a_record_at_all(tmp_path):
    path = tmp_path / "junk.tfrecord"
    path.write_bytes(_raw_frames([b"\xff\xff\xff definitely not a protobuf"]))
    with pytest.raises(RecordError, match=r"junk\.tfrecord, record 0"):
        list(tfrecord_io.read_records(str(path)))


def test_strings_with_nul_are_refused():
    rec = fake.fake_record("episode", image_size=8, num_steps=1)
    rec["object_ids"] = ["001", "0\x00"]
    with pytest.raises(RecordError, match=r"field 'object_ids': contains a NUL character"):
        codec.encode(rec)


def test_episode_step_count_must_match(tmp_path):
    rec = fake.fake_record("episode", image_size=8, num_steps=3)
    rec["reward"] = rec["reward"][:-1]
    with pytest.raises(RecordError, match=r"'reward': 3 steps, but num_steps \+ 1 = 4"):
        codec.encode(rec)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    recs = fake.fake_records("transition", 2, image_size=8)
    path = tmp_path / "plain-name.tfrecord"
    path.write_bytes(gzip.compress(_raw_frames([codec.encode(r) for r in recs])))
    assert [r["episode_id"] for r in tfrecord_io.read_records(str(path))] == \
        [r["episode_id"] for r in recs]
    assert struct.unpack("<Q", _raw_frames([b"abc"])[:8])[0] == 3
