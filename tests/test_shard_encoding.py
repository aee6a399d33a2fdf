"""The shortcuts the shard job takes give what the plain codec gives: transitions encoded from
shared Features, episodes decoded a feature list at a time, shards gzipped with ISA-L."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

import schemas  # noqa: F401  (first: the tfrecord/tensorflow import hook)
from schemas import codec, example_proto, fake, specs, tfrecord_io
from schemas.errors import RecordError
from schemas.transitions import encoded_transitions, episode_transitions


def _decoded_episodes():
    eps = fake.fake_records("episode", 6, seed=3, image_size=8)  # 1 to 20 steps each
    eps += fake.fake_records("episode", 2, seed=4, image_size=8, num_steps=1)
    return [codec.decode(codec.encode(e)) for e in eps]


@pytest.mark.parametrize("source", [None, "online"])
def test_encoded_transitions_are_the_codec_encoding_of_each_transition(source):
    for episode in _decoded_episodes():
        expected = [codec.encode(t) for t in episode_transitions(episode, 0.9, source)]
        assert len(expected) == int(episode["num_steps"])
        assert encoded_transitions(episode, 0.9, source) == expected


def test_a_version_2_episode_gives_current_version_transitions():
    episode = fake.fake_record("episode", 5, image_size=8, num_steps=3)
    msg = example_proto.SequenceExample.FromString(codec.encode(episode))
    msg.context.feature["schema_version"].int64_list.value[0] = 2
    del msg.context.feature["cell"]
    decoded = codec.decode(msg.SerializeToString())
    got = encoded_transitions(decoded, 0.9)
    assert got == [codec.encode(t) for t in episode_transitions(decoded, 0.9)]
    assert {int(codec.decode(g)["schema_version"]) for g in got} == {specs.SCHEMA_VERSION}


def test_decoded_steps_equal_the_written_values_as_writable_arrays():
    episode = fake.fake_record("episode", 7, image_size=8, num_steps=4)
    decoded = codec.decode(codec.encode(episode))
    for f in specs.EPISODE.step_fields:
        got, want = decoded[f.name], codec.validate(episode)[f.name]
        assert got.dtype == want.dtype and got.shape == want.shape, f.name
        np.testing.assert_array_equal(got, want)
    decoded["observation/image"][0, 0, 0, 0] = 1  # like the step-by-step arrays: writable


def test_a_step_stored_wrongly_is_still_named():
    episode = fake.fake_record("episode", 8, image_size=8, num_steps=4)
    msg = example_proto.SequenceExample.FromString(codec.encode(episode))
    msg.feature_lists.feature_list["observation/image"].feature[2].bytes_list.value[0] = b"x" * 5
    with pytest.raises(RecordError, match=r"'observation/image' at step 2: 5 bytes do not make"):
        codec.decode(msg.SerializeToString())
    msg = example_proto.SequenceExample.FromString(codec.encode(episode))
    msg.feature_lists.feature_list["reward"].feature[3].float_list.value.append(1.0)
    with pytest.raises(RecordError, match=r"'reward' at step 3: expected 1 values, got 2"):
        codec.decode(msg.SerializeToString())


def test_fast_gzip_reads_back_everywhere_and_is_deterministic(tmp_path):
    import tensorflow as tf

    records = [codec.encode(r) for r in fake.fake_records("transition", 20, image_size=16)]
    paths = [tmp_path / "a.tfrecord.gz", tmp_path / "b.tfrecord.gz"]
    for path in paths:
        with tfrecord_io.RecordWriter(str(path), fast=True) as w:
            for data in records:
                w.write(data)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes()[:2] == b"\x1f\x8b"
    assert [r.data for r in tfrecord_io.iter_raw(str(paths[0]))] == records
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(paths[0]), "GZIP")] == records
    # The same uncompressed stream as the default writer's, in another deflate encoding.
    with tfrecord_io.RecordWriter(str(tmp_path / "zlib.gz")) as w:
        for data in records:
            w.write(data)
    assert gzip.decompress(paths[0].read_bytes()) == \
        gzip.decompress((tmp_path / "zlib.gz").read_bytes())
