"""Every record kind survives encode -> file -> decode through all three readers:
our TensorFlow-free reader, the ``tfrecord`` package, and TensorFlow's parsers."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from tfrecord.reader import tfrecord_loader

from schemas import codec, fake, specs, tf_codec, tfrecord_io
from schemas.interop import from_tfrecord, tfrecord_description, tfrecord_sequence_description
from strategies import records

KINDS = sorted(specs.SPECS)
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def assert_same(spec, expected: dict, actual: dict):
    assert set(actual) == set(spec.names)
    for f in spec.fields + spec.step_fields:
        a, b = expected[f.name], actual[f.name]
        if f.dtype in ("string",):
            assert list(a) == list(b) if f.variable else a == b, f.name
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f.name)


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=__import__("hypothesis").strategies.data())
def test_roundtrip_tf_free(kind, data, tmp_path_factory):
    record = codec.validate(data.draw(records(kind)))
    path = str(tmp_path_factory.mktemp("rt") / "r.tfrecord.gz")
    tfrecord_io.write_records(path, [record, record])
    back = list(tfrecord_io.read_records(path))
    assert len(back) == 2
    assert_same(specs.spec_for(kind), record, back[0])

    description = tfrecord_description(kind)
    if kind == "episode":
        loader = tfrecord_loader(path, None, description, compression_type="gzip",
                                 sequence_description=tfrecord_sequence_description())
    else:
        loader = tfrecord_loader(path, None, description, compression_type="gzip")
    via_package = [from_tfrecord(kind, raw) for raw in loader]
    assert len(via_package) == 2
    assert_same(specs.spec_for(kind), record, via_package[1])


@pytest.mark.parametrize("kind", ["transition", "labelled_transition"])
@SETTINGS
@given(data=__import__("hypothesis").strategies.data())
def test_roundtrip_tensorflow_examples(kind, data):
    record = codec.validate(data.draw(records(kind)))
    shape = tuple(int(v) for v in record["image_shape"])
    parsed = tf_codec.parse_batch(tf.constant([codec.encode(record)]), kind, shape)
    for f in specs.spec_for(kind).fields:
        got = parsed[f.name].numpy()[0]
        want = record[f.name]
        if f.dtype == "string":
            assert got.decode("utf-8") == want, f.name
        else:
            np.testing.assert_array_equal(got, np.asarray(want), err_msg=f.name)


@SETTINGS
@given(data=__import__("hypothesis").strategies.data())
def test_roundtrip_tensorflow_episodes(data):
    record = codec.validate(data.draw(records("episode")))
    shape = tuple(int(v) for v in record["image_shape"])
    context, steps = tf_codec.parse_episode(tf.constant(codec.encode(record)), shape)
    spec = specs.EPISODE
    for f in spec.fields:
        got = context[f.name]
        if f.variable:
            assert [v.decode() for v in got.numpy().tolist()] == record[f.name]
        elif f.dtype == "string":
            assert got.numpy().decode("utf-8") == record[f.name]
        else:
            np.testing.assert_array_equal(got.numpy(), np.asarray(record[f.name]), f.name)
    for f in spec.step_fields:
        np.testing.assert_array_equal(steps[f.name].numpy(), record[f.name], f.name)


def test_tf_dataset_reads_our_gzip_shards(tmp_path):
    recs = fake.fake_records("labelled_transition", 7, seed=3, image_size=16)
    path = str(tmp_path / "shard.tfrecord.gz")
    tfrecord_io.write_records(path, recs)
    ds = tf.data.TFRecordDataset(path, compression_type="GZIP").batch(4).map(
        lambda s: tf_codec.parse_batch(s, "labelled_transition", (16, 16, 3)))
    batches = list(ds)
    assert [int(b["target"].shape[0]) for b in batches] == [4, 3]
    np.testing.assert_array_equal(batches[0]["next_observation/image"][2].numpy(),
                                  recs[2]["next_observation/image"])
    assert batches[1]["episode_id"][0].numpy().decode() == recs[4]["episode_id"]


@pytest.mark.parametrize("kind", KINDS)
def test_fake_data_validates_against_its_spec(kind):
    for rec in fake.fake_records(kind, 5, seed=1, image_size=24):
        assert codec.validate(rec)["kind"] == kind
        assert codec.decode(codec.encode(rec))["kind"] == kind


def test_writes_are_byte_identical_for_the_same_records(tmp_path):
    recs = fake.fake_records("transition", 4, seed=9, image_size=8)
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    tfrecord_io.write_records(str(a), recs)
    tfrecord_io.write_records(str(b), recs)
    assert a.read_bytes() == b.read_bytes()


def test_keras_inputs_follow_the_spec():
    inputs = tf_codec.keras_inputs(32)
    assert inputs["observation/image"].shape[1:] == (32, 32, 3)
    assert inputs["observation/image"].dtype == "uint8"
    assert inputs["action"].shape[1:] == (specs.ACTION_DIM,)
    assert inputs["observation/height"].shape[1:] == ()


def test_catalogue_schema_matches_rows():
    from schemas.catalogue import catalogue_row, catalogue_schema, catalogue_table

    episodes = [codec.validate(r) for r in fake.fake_records("episode", 3, image_size=8)]
    table = catalogue_table(catalogue_row(e) for e in episodes)
    assert table.schema.equals(catalogue_schema(), check_metadata=False)
    assert table.column("episode_id").to_pylist() == [e["episode_id"] for e in episodes]
    assert table.column("object_ids").to_pylist()[0] == episodes[0]["object_ids"]
    assert "schema_version" in table.column_names


def test_version_2_records_read_as_the_cell_before_identities():
    from schemas import example_proto

    episode = fake.fake_record("episode", image_size=8, num_steps=2)
    msg = example_proto.SequenceExample.FromString(codec.encode(episode))
    msg.context.feature["schema_version"].int64_list.value[0] = 2
    del msg.context.feature["cell"]  # as version 2 wrote it
    old = msg.SerializeToString()
    as_written = {k: v for k, v in episode.items() if k != "cell"} | {"schema_version": 2}
    for decoded in (codec.decode(old), codec.validate(as_written)):
        assert decoded["cell"] == specs.CELL_BEFORE_IDENTITIES
        assert int(decoded["schema_version"]) == specs.SCHEMA_VERSION
    # Re-encoded, it keeps saying which cell it came from.
    assert codec.decode(codec.encode(codec.decode(old)))["cell"] == specs.CELL_BEFORE_IDENTITIES
    context, _ = tf_codec.parse_episode(tf.constant(old), (8, 8, 3))
    assert context["cell"].numpy().decode() == specs.CELL_BEFORE_IDENTITIES
    # Transitions did not change between the two versions: both read.
    transition = fake.fake_record("transition", image_size=8)
    msg = example_proto.Example.FromString(codec.encode(transition))
    msg.features.feature["schema_version"].int64_list.value[0] = 2
    parsed = tf_codec.parse_batch(tf.constant([msg.SerializeToString()]), "transition", (8, 8, 3))
    assert parsed["episode_id"].numpy()[0].decode() == transition["episode_id"]
    assert codec.decode(msg.SerializeToString())["episode_id"] == transition["episode_id"]


def test_an_episode_header_decodes_without_its_steps():
    from schemas import codec
    from schemas.fake import fake_records
    from schemas.specs import EPISODE

    episode = fake_records("episode", 1, seed=4, image_size=16, num_steps=3)[0]
    data = codec.encode(episode)
    header, full = codec.decode(data, steps=False), codec.decode(data)
    assert set(header) == {f.name for f in EPISODE.fields}
    assert all(header[k] == full[k] for k in header if k != "image_shape")
    assert tuple(header["image_shape"]) == tuple(full["image_shape"])
    assert "observation/image" not in header
