"""Fault injection: damaged, missing or duplicated inputs for every job, on real files.

Each case asserts the exit status (0 ok, 2 refused, 3 published with dead letters), the one
line that names the file at fault, the accounting ``records in = out + dead-lettered`` and that
nothing already published changed when a job refuses.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil

import pytest

from pipelines_testlib import (IMAGE, IN_PROCESS, corrupt_record, dead_letters, make_export,
                               manifest, qtopt, read_all, shard_bytes, write_episodes)
from schemas import tfrecord_io

FILES, PER_FILE, STEPS = 5, 6, 3
EPISODES = FILES * PER_FILE


def collect_name(first: int, end: int) -> str:
    return f"episodes-s0-{first:07d}-{end:07d}.tfrecord.gz"


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Thirty fake episodes laid out as ``qtopt collect`` leaves them: shards named by their
    index range, ``_collect.json`` and ``_SUCCESS.json`` beside them."""
    root = tmp_path_factory.mktemp("faults")
    src = root / "episodes"
    paths = write_episodes(src, files=FILES, per_file=PER_FILE, steps=STEPS, seed=5)
    for i, path in enumerate(paths):
        path.rename(src / collect_name(i * PER_FILE, (i + 1) * PER_FILE))
    (src / "_collect.json").write_text("{}")
    (src / "_SUCCESS.json").write_text(json.dumps({"episodes": EPISODES}))
    return src


def damage(path, fault: str) -> None:
    """Break a record file in place the way disks, copies and people do."""
    data = path.read_bytes()
    if fault == "truncated":           # a copy cut at half its bytes
        path.write_bytes(data[: len(data) // 2])
    elif fault == "flipped":           # one record's data damaged, the gzip layer intact
        corrupt_record(path, 1)
    elif fault == "random":            # replaced by noise of the same size
        path.write_bytes(os.urandom(len(data)))
    elif fault == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(fault)


def err_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def balanced(acc: dict, records_in: int) -> None:
    assert acc["records_in"] == records_in
    assert acc["records_out"] + acc["records_dead_lettered"] + sum(acc["left_out"].values()) \
        == records_in


# ------------------------------------------------------------------------------------ shard

FAULTS = ["truncated", "flipped", "random", "empty"]


@pytest.mark.parametrize("fault", FAULTS)
def test_shard_accounts_for_every_episode_of_a_damaged_file(collection, tmp_path, fault,
                                                            capsys):
    src = tmp_path / "episodes"
    shutil.copytree(collection, src)
    bad = src / collect_name(PER_FILE, 2 * PER_FILE)
    damage(bad, fault)
    out = tmp_path / "transitions"
    capsys.readouterr()
    # ``DIR/*``: the collection's _SUCCESS.json and _collect.json are not record files.
    assert qtopt("shard", "-i", f"{src}/*", "-o", out, "--num-shards", 2, *IN_PROCESS) == 3
    m = manifest(out)
    acc = m["accounting"]
    balanced(acc, EPISODES)
    assert acc["unit"] == "episodes" and acc["records_out"] == m["counts"]["episodes"]
    letters = dead_letters(out)
    assert {d["file"] for d in letters} == {str(bad)}
    assert sum(d["records"] for d in letters) == acc["records_dead_lettered"]
    lost = {"flipped": 1, "random": PER_FILE, "empty": PER_FILE}.get(fault)
    if lost is not None:
        assert acc["records_dead_lettered"] == lost
    line = err_line(capsys)
    assert line.startswith(f"shard: {acc['records_dead_lettered']} of {EPISODES} episodes "
                           f"dead-lettered (first: {bad}, record ")
    assert f"see {out}/dead-letter.jsonl" in line
    # Within --max-dead-fraction the same run exits 0, and still says what it lost.
    assert qtopt("shard", "-i", f"{src}/*", "-o", out, "--num-shards", 2,
                 "--max-dead-fraction", 0.2, *IN_PROCESS) == 0
    assert "within --max-dead-fraction 0.2" in err_line(capsys)
    assert manifest(out)["accounting"] == acc


def test_shard_of_whole_files_exits_0_and_balances(collection, tmp_path, capsys):
    out = tmp_path / "t"
    assert qtopt("shard", "-i", f"{collection}/*", "-o", out, "--num-shards", 2,
                 *IN_PROCESS) == 0
    assert capsys.readouterr().err == ""
    acc = manifest(out)["accounting"]
    balanced(acc, EPISODES)
    assert acc["records_out"] == EPISODES and acc["dead_letters"] == 0


def test_shard_refuses_duplicated_episode_ids_naming_both_files(collection, tmp_path, capsys):
    src = tmp_path / "episodes"
    shutil.copytree(collection, src)
    first = src / collect_name(0, PER_FILE)
    copy = src / "copy-of-first.tfrecord.gz"
    shutil.copy(first, copy)
    out = tmp_path / "transitions"
    assert qtopt("shard", "-i", f"{collection}/*", "-o", out, "--num-shards", 2,
                 *IN_PROCESS) == 0
    published = shard_bytes(out)
    capsys.readouterr()
    assert qtopt("shard", "-i", f"{src}/*", "-o", out, "--num-shards", 2, *IN_PROCESS) == 2
    line = err_line(capsys)
    assert str(copy) in line and str(first) in line and "--drop-duplicates" in line
    assert f"{PER_FILE} episode id(s) read more than once" in line
    assert shard_bytes(out) == published and not (out / "_staging").exists()
    # Asked to, it keeps the first copy of each (by file name): the same data as without it.
    assert qtopt("shard", "-i", f"{src}/*", "-o", out, "--num-shards", 2, "--drop-duplicates",
                 *IN_PROCESS) == 0
    m = manifest(out)
    balanced(m["accounting"], EPISODES + PER_FILE)
    assert m["accounting"]["left_out"] == {"duplicate_episodes": PER_FILE}
    assert m["counts"]["episodes"] == EPISODES and m["counts"]["duplicate_episode_ids"] == 0
    assert shard_bytes(out) == published


def test_shard_names_a_stray_file_in_its_glob(collection, tmp_path, capsys):
    src = tmp_path / "episodes"
    shutil.copytree(collection, src)
    (src / "notes.txt").write_text("episodes 0-29, scripted, seed 0\n")
    out = tmp_path / "t"
    capsys.readouterr()
    assert qtopt("shard", "-i", f"{src}/*", "-o", out, "--num-shards", 2, *IN_PROCESS) == 3
    assert f"1 of {EPISODES + 1} episodes dead-lettered (first: {src / 'notes.txt'}, record 0, " \
        "offset 0: bad length checksum" in err_line(capsys)
    balanced(manifest(out)["accounting"], EPISODES + 1)
    assert manifest(out)["counts"]["episodes"] == EPISODES


@pytest.mark.parametrize("fault", ["schema_version", "image_shape", "nan"])
def test_shard_dead_letters_a_record_that_breaks_its_spec(collection, tmp_path, fault, capsys):
    from schemas import example_proto

    src = tmp_path / "episodes"
    shutil.copytree(collection, src)
    bad = src / collect_name(2 * PER_FILE, 3 * PER_FILE)
    raws = [r.data for r in tfrecord_io.iter_raw(str(bad))]
    msg = example_proto.SequenceExample.FromString(raws[2])
    if fault == "schema_version":
        msg.context.feature["schema_version"].int64_list.value[0] = 99
    elif fault == "image_shape":
        msg.context.feature["image_shape"].int64_list.value[0] = IMAGE + 1
    else:
        steps = msg.feature_lists.feature_list["reward"].feature
        steps[0].float_list.value[0] = float("nan")
    raws[2] = msg.SerializeToString()
    with tfrecord_io.RecordWriter(str(bad)) as w:
        for data in raws:
            w.write(data)
    out = tmp_path / "t"
    capsys.readouterr()
    assert qtopt("shard", "-i", f"{src}/*.gz", "-o", out, "--num-shards", 2, *IN_PROCESS) == 3
    assert f"1 of {EPISODES} episodes dead-lettered (first: {bad}, record 2, offset " \
        in err_line(capsys)
    (letter,) = dead_letters(out)
    assert letter["stage"] == "decode" and letter["index"] == 2
    balanced(manifest(out)["accounting"], EPISODES)


# ---------------------------------------------------------------------------------- relabel

@pytest.fixture(scope="module")
def transitions(collection, tmp_path_factory):
    root = tmp_path_factory.mktemp("relabel-faults")
    ds = root / "transitions"
    assert qtopt("shard", "-i", f"{collection}/*.gz", "-o", ds, "--num-shards", 3,
                 *IN_PROCESS) == 0
    return ds, make_export(root / "exports", step=100)


@pytest.mark.parametrize("job", ["relabel", "subsample"])
@pytest.mark.parametrize("fault", FAULTS)
def test_transition_jobs_account_for_every_transition_of_a_damaged_shard(transitions, tmp_path,
                                                                         job, fault, capsys):
    ds, export = transitions
    bad_ds = tmp_path / "transitions"
    shutil.copytree(ds, bad_ds)
    total = manifest(ds)["counts"]["transitions"]
    name = manifest(ds)["files"][1]["name"]
    held = manifest(ds)["files"][1]["records"]
    damage(bad_ds / name, fault)
    if job == "relabel":
        out = tmp_path / "labelled" / "epoch-0"
        argv = ["relabel", "-i", bad_ds, "-e", export, "-o", out.parent, "--epoch", 0]
        first = f"(first: {bad_ds / name}, record "
    else:
        out = tmp_path / "all"
        argv = ["subsample", "-i", bad_ds, "--fraction", 1, "-o", out]
        first = f"(first: {bad_ds / name}"
    capsys.readouterr()
    assert qtopt(*argv, *IN_PROCESS) == 3
    m = manifest(out)
    acc = m["accounting"]
    balanced(acc, total)
    assert acc["records_out"] == m["counts"]["transitions"] == len(read_all(out))
    lost = {"flipped": 1, "random": held, "empty": held}.get(fault)
    if lost is not None:
        assert acc["records_dead_lettered"] == lost
    line = err_line(capsys)
    assert line.startswith(f"{job}: {acc['records_dead_lettered']} of {total} transitions "
                           f"dead-lettered {first}")
    assert f"see {out}/dead-letter.jsonl" in line


def test_relabel_refuses_missing_manifest_and_half_written_export(transitions, tmp_path,
                                                                  capsys):
    ds, export = transitions
    half = tmp_path / "transitions"
    shutil.copytree(ds, half)
    (half / "manifest.json").unlink()
    out = tmp_path / "labelled"
    capsys.readouterr()
    assert qtopt("relabel", "-i", half, "-e", export, "-o", out, "--epoch", 0,
                 *IN_PROCESS) == 2
    assert f"dataset {half} has no manifest.json" in err_line(capsys)
    exports = tmp_path / "exports"
    shutil.copytree(export, exports / "export-000000007")
    (exports / "export-000000007" / "manifest.json").unlink()
    assert qtopt("relabel", "-i", ds, "-e", exports, "-o", out, "--epoch", 0, *IN_PROCESS) == 2
    assert f"{exports}: no complete export" in err_line(capsys)
    assert not out.exists()


# ------------------------------------------------------------------------------------ train

TRAIN = ["--set", "model.preset=tiny", "--set", f"robot.image_size={IMAGE}",
         "--set", "train.batch_size=4", "--set", "train.shuffle_buffer=8", "--no-progress"]


@pytest.fixture(scope="module")
def labelled(transitions, tmp_path_factory):
    ds, export = transitions
    out = tmp_path_factory.mktemp("train-faults") / "labelled"
    assert qtopt("relabel", "-i", ds, "-e", export, "-o", out, "--epoch", 0, *IN_PROCESS) == 0
    return out / "epoch-0"


@pytest.mark.parametrize("fault", ["flipped", "truncated"])
def test_train_names_a_damaged_labelled_shard(labelled, tmp_path, fault, capsys):
    data = tmp_path / "epoch-0"
    shutil.copytree(labelled, data)
    name = manifest(labelled)["files"][2]["name"]
    if fault == "flipped":
        offset = corrupt_record(data / name, 1)
        where = f"{data / name}, record 1, offset {offset}: bad data checksum"
    else:
        raw = gzip.decompress((data / name).read_bytes())
        (data / name).write_bytes(gzip.compress(raw[: len(raw) * 2 // 3], mtime=0))
        where = f"{data / name}, record "
    capsys.readouterr()
    assert qtopt("train", "--data", data, "--workdir", tmp_path / "w", "--until-step", 40,
                 *TRAIN) == 2
    line = err_line(capsys)
    assert line.startswith(f"qtopt train: error: {where}") and "Traceback" not in line
    assert not (tmp_path / "w" / "exports").exists()


def test_a_corrupted_weights_file_of_any_copy_is_refused(transitions, tmp_path, capsys):
    # Relabel loads only the Polyak and lagged copies; the online one is checked all the same.
    ds, export = transitions
    copy = tmp_path / "exports" / "export-000000100"
    shutil.copytree(export, copy)
    weights = copy / "online" / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    out = tmp_path / "labelled"
    assert qtopt("relabel", "-i", ds, "-e", copy, "-o", out, "--epoch", 0, *IN_PROCESS) == 2
    assert err_line(capsys) == (f"qtopt relabel: error: {weights}: checksum does not match the "
                                "manifest (corrupted?)")
    assert not out.exists()


def test_the_tfrecord_package_reads_a_damaged_shard_and_check_file_does_not(transitions,
                                                                            tmp_path):
    from tfrecord.reader import tfrecord_loader

    from schemas.errors import RecordError
    from schemas.interop import check_file, tfrecord_description

    ds, _export = transitions
    info = manifest(ds)["files"][0]
    path = tmp_path / info["name"]
    shutil.copy(ds / info["name"], path)
    assert check_file(str(path)) == info["records"]
    offset = corrupt_record(path, 1)
    # What the README says: the package itself does not notice.
    got = list(tfrecord_loader(str(path), None, tfrecord_description("transition"),
                               compression_type="gzip"))
    assert len(got) == info["records"]
    with pytest.raises(RecordError) as caught:
        check_file(str(path))
    assert str(caught.value) == f"{path}, record 1, offset {offset}: bad data checksum " \
        "(corrupted record)"


# ------------------------------------------------------------------- evaluate and finetune

@pytest.mark.parametrize("fault", ["half_written", "no_such", "corrupted"])
def test_evaluate_and_finetune_refuse_a_broken_export_before_any_work(transitions, tmp_path,
                                                                      fault, capsys):
    ds, export = transitions
    exports = tmp_path / "train" / "exports"
    copy = exports / "export-000000100"
    shutil.copytree(export, copy)
    if fault == "half_written":
        (copy / "manifest.json").unlink()
        expected = f"{exports}: no complete export (manifest.json missing: half-written?)"
    elif fault == "no_such":
        shutil.rmtree(exports)
        exports.mkdir()
        expected = f"{exports}: no such export"
    else:
        weights = copy / "polyak" / "weights.npz"
        weights.write_bytes(weights.read_bytes()[:-10])
        expected = f"{weights}: checksum does not match the manifest (corrupted?)"
    capsys.readouterr()
    out = tmp_path / "eval"
    assert qtopt("evaluate", "--policy", exports, "--out", out, *TRAIN[:4]) == 2
    assert expected in err_line(capsys) and not out.exists()


def test_finetune_refuses_an_incomplete_offline_dataset(transitions, tmp_path, capsys):
    ds, _export = transitions
    half = tmp_path / "transitions"
    shutil.copytree(ds, half)
    (half / "manifest.json").unlink()
    capsys.readouterr()
    assert qtopt("finetune", "--run", tmp_path / "run", "--offline", half, "--init",
                 tmp_path / "none") == 2
    assert err_line(capsys) == (f"qtopt finetune: error: dataset {half} has no manifest.json: "
                                "it is incomplete (its job is running, failed or was killed; "
                                "rerun it)")
    assert not (tmp_path / "run" / "finetune").exists()


def test_a_chained_job_stops_with_status_3_after_dead_letters(collection, tmp_path, capsys):
    # finetune, demo and study run each step through invoke: dead letters stop the chain.
    from pipelines.cli import invoke
    from schemas.errors import DeadLettered

    src = tmp_path / "episodes"
    shutil.copytree(collection, src)
    damage(src / collect_name(0, PER_FILE), "empty")
    with pytest.raises(DeadLettered, match="qtopt shard published its output but "
                                           "dead-lettered input records") as caught:
        invoke(["shard", "-i", f"{src}/*", "-o", tmp_path / "t", "--num-shards", 2,
                *IN_PROCESS])
    assert caught.value.exit_status == 3
    assert (tmp_path / "t" / "manifest.json").exists()
    assert invoke(["shard", "-i", f"{src}/*", "-o", tmp_path / "t", "--num-shards", 2,
                   "--set", "pipeline.max_dead_fraction=0.25", *IN_PROCESS]) == 0


def test_a_collection_directory_is_shard_input_and_relabel_says_to_shard_it(collection,
                                                                           tmp_path, capsys):
    by_glob, by_dir = tmp_path / "glob", tmp_path / "dir"
    assert qtopt("shard", "-i", f"{collection}/*.tfrecord.gz", "-o", by_glob, "--num-shards", 2,
                 *IN_PROCESS) == 0
    assert qtopt("shard", "-i", collection, "-o", by_dir, "--num-shards", 2, *IN_PROCESS) == 0
    assert shard_bytes(by_dir) == shard_bytes(by_glob)
    capsys.readouterr()
    assert qtopt("relabel", "-i", collection, "-e", tmp_path / "none", "-o", tmp_path / "l",
                 "--epoch", 0, *IN_PROCESS) == 2
    assert err_line(capsys) == (f"qtopt relabel: error: dataset {collection} holds episodes "
                                "from qtopt collect, not a dataset: make transitions of them "
                                f"with qtopt shard -i {collection}")


def test_relabel_takes_a_glob_of_datasets_as_the_same_inputs_named_one_by_one(transitions,
                                                                              tmp_path):
    ds, export = transitions
    for name in ("round-000", "round-001"):
        shutil.copytree(ds, tmp_path / "rounds" / name)
    by_name, by_glob = tmp_path / "by-name", tmp_path / "by-glob"
    assert qtopt("relabel", "-i", tmp_path / "rounds" / "round-000", "-i",
                 tmp_path / "rounds" / "round-001", "-e", export, "-o", by_name, "--epoch", 0,
                 *IN_PROCESS) == 0
    assert qtopt("relabel", "-i", tmp_path / "rounds" / "round-*", "-e", export, "-o", by_glob,
                 "--epoch", 0, *IN_PROCESS) == 0
    assert shard_bytes(by_glob / "epoch-0") == shard_bytes(by_name / "epoch-0")
    assert manifest(by_glob / "epoch-0")["counts"]["transitions"] == \
        2 * manifest(ds)["counts"]["transitions"]
    assert qtopt("relabel", "-i", tmp_path / "nothing-*", "-e", export, "-o", by_glob,
                 "--epoch", 1, *IN_PROCESS) == 2
