"""``qtopt collect`` and ``qtopt render`` end to end: the real Beam runner, real shards on disk, a
real process killed with SIGKILL and resumed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipelines.jobs.collect import episode_name, missing_blocks
from robot.protocols import wilson_interval
from schemas import fs, tfrecord_io

SMALL = ["--set", "robot.image_size=16", "--set", "robot.max_objects=6"]


def _collect(out, *extra, episodes=6, block=2, seed=0, timeout=240):
    cmd = [sys.executable, "-m", "pipelines.cli", "collect", "--policy", "scripted",
           "--episodes", str(episodes), "--episodes-per-block", str(block), "--out", str(out),
           "--seed", str(seed), "--workers", "1", *SMALL, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _episodes(out) -> list[dict]:
    return [r for path in fs.glob(os.path.join(out, "*.tfrecord.gz"))
            for r in tfrecord_io.read_records(path)]


def _digests(out) -> dict:
    return {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in fs.glob(os.path.join(out, "*.tfrecord.gz"))}


def test_collect_writes_the_set_and_a_rerun_adds_nothing(tmp_path):
    out = tmp_path / "eps"
    proc = _collect(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "success" in proc.stdout and "95% CI" in proc.stdout and "episodes/s" in proc.stdout
    episodes = _episodes(out)
    assert sorted(e["episode_id"] for e in episodes) == \
        [episode_name("scripted-train", 0, i) for i in range(6)]
    assert len(fs.glob(os.path.join(out, "*.tfrecord.gz"))) == 3
    assert all(e["observation/image"].shape[1:] == (16, 16, 3) for e in episodes)
    # The demo preset (the default) adds appendix B's exploration to the scripted policy.
    assert {e["policy"] for e in episodes} == {"scripted+epsilon=0.2"}
    summary = json.loads((out / "_SUCCESS.json").read_text())
    assert summary["episodes"] == 6
    assert summary["successes"] == sum(e["success"] for e in episodes)
    before = _digests(out)
    again = _collect(out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "6/6 episodes present, 0 blocks to run" in again.stdout
    assert _digests(out) == before


def test_a_killed_collection_leaves_no_partial_file_and_resumes_to_exactly_n(tmp_path):
    out = tmp_path / "eps"
    n = 40
    cmd = [sys.executable, "-m", "pipelines.cli", "collect", "--policy", "scripted",
           "--episodes", str(n), "--episodes-per-block", "2", "--out", str(out), "--seed", "3",
           "--workers", "1", *SMALL]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while not fs.glob(os.path.join(out, "*.tfrecord.gz")):
            assert proc.poll() is None, "collect ended before it could be killed"
            assert time.monotonic() < deadline, "no shard was published in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its Beam workers
        proc.wait()
    time.sleep(0.5)
    published = fs.glob(os.path.join(out, "*.tfrecord.gz"))
    assert 1 <= len(published) < n // 2, "the kill came too late to test anything"
    for path in published:  # everything a reader can see is complete
        assert len(list(tfrecord_io.read_records(path))) == 2
    assert not os.path.exists(out / "_SUCCESS.json")
    kept = _digests(out)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = [e["episode_id"] for e in _episodes(out)]
    assert len(ids) == n and len(set(ids)) == n
    assert set(ids) == {episode_name("scripted-train", 3, i) for i in range(n)}
    after = _digests(out)
    assert all(after[name] == digest for name, digest in kept.items())  # not rewritten
    assert not [p for p in os.listdir(out) if ".tmp-" in p]


def test_a_different_collection_is_not_mixed_into_a_directory(tmp_path):
    out = tmp_path / "eps"
    assert _collect(out, episodes=2).returncode == 0
    proc = _collect(out, episodes=2, seed=1)
    assert proc.returncode == 2
    assert "holds a different collection" in proc.stderr and "seed" in proc.stderr


def test_episodes_record_their_cell_and_shard_refuses_to_mix_two(tmp_path):
    from schemas.config import RobotConfig

    small, large = tmp_path / "scale-0.8", tmp_path / "scale-1"
    for out, scale in ((small, "0.8"), (large, "1.0")):
        proc = _collect(out, "--set", f"robot.object_scale={scale}", episodes=2, block=1)
        assert proc.returncode == 0, proc.stderr[-2000:]
    cells = {out: RobotConfig(image_size=16, max_objects=6, object_scale=scale).cell_identity()
             for out, scale in ((small, 0.8), (large, 1.0))}
    assert cells[small] != cells[large]
    for out, cell in cells.items():
        assert {e["cell"] for e in _episodes(out)} == {cell}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "shard", "-i", f"{small}/*.tfrecord.gz",
         "-i", f"{large}/*.tfrecord.gz", "-o", str(tmp_path / "ds"),
         "--direct_running_mode=in_memory"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "would mix data of different cells" in err, err
    for out, cell in cells.items():
        assert f"{cell} ({fs.glob(os.path.join(out, '*.tfrecord.gz'))[0]})" in err
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("args, message", [
    (["--objects", "/nowhere/thing.urdf"], "/nowhere/thing.urdf: no such file"),
    (["--episodes", "0"], "collect.episodes"),
    (["--policy", "/nowhere/export"], "/nowhere/export"),
    (["--set", "robot.min_objects=0"], "robot.min_objects"),
])
def test_bad_collect_input_is_one_line_naming_it(tmp_path, args, message):
    cmd = [sys.executable, "-m", "pipelines.cli", "collect", "--out", str(tmp_path / "x"),
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_blocks_fill_only_the_gaps():
    done = [(0, 2, "a"), (4, 6, "b")]
    assert missing_blocks(9, done, 2) == [(2, 4), (6, 8), (8, 9)]
    assert missing_blocks(4, [(0, 4, "a")], 3) == []


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson_interval(80, 500)
    assert lo < 0.16 < hi and round(lo, 3) == 0.130 and round(hi, 3) == 0.195
    assert wilson_interval(0, 10)[0] == 0.0


def test_render_writes_a_gif_of_chosen_episodes(tmp_path):
    from PIL import Image

    out = tmp_path / "eps"
    assert _collect(out, episodes=2).returncode == 0
    shard = fs.glob(os.path.join(out, "*.tfrecord.gz"))[0]
    episodes = list(tfrecord_io.read_records(shard))
    movie = tmp_path / "m.gif"
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "render", shard, "--episodes",
                           f"1,{episodes[0]['episode_id']}", "--out", str(movie)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    gif = Image.open(movie)
    # One frame per step plus two holding the outcome, 250 ms each at the default 4 fps (Pillow
    # merges identical neighbours into one longer frame, so count time, not frames).
    total = 0
    for i in range(gif.n_frames):
        gif.seek(i)
        total += gif.info["duration"]
    assert total == 250 * sum(int(e["num_steps"]) + 1 + 2 for e in episodes)
    gif.seek(0)
    first = np.asarray(gif.convert("RGB"))
    assert first.shape[1] == 16 * 16  # scaled up to about 256 pixels
    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "render", shard, "--episodes",
                          "7", "--out", str(movie)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--episodes: 7 not found" in bad.stderr


def test_success_file_lists_every_shard_and_fewer_episodes_are_refused(tmp_path, capsys):
    from pipelines_testlib import IN_PROCESS, manifest, qtopt

    out = tmp_path / "eps"
    proc = _collect(out, episodes=4)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = (out / "_SUCCESS.json").read_text()
    files = json.loads(summary)["files"]
    assert {name: f["records"] for name, f in files.items()} == {
        "episodes-s0-0000000-0000002.tfrecord.gz": 2, "episodes-s0-0000002-0000004.tfrecord.gz": 2}
    assert all(f["bytes"] == (out / name).stat().st_size for name, f in files.items())
    # Asking for fewer than the directory holds would leave a summary of part of it.
    fewer = _collect(out, episodes=2)
    assert fewer.returncode == 2
    assert fewer.stderr.strip() == (
        f"qtopt collect: error: --out {out} already holds episodes up to index 3 of this "
        "collection; --episodes 2 would describe only part of it (use --episodes 4 or more, or "
        "another directory)")
    assert (out / "_SUCCESS.json").read_text() == summary
    # Shard reads the whole directory and accounts for what the summary lists.
    assert qtopt("shard", "-i", f"{out}/*", "-o", tmp_path / "t", "--num-shards", 1,
                 *IN_PROCESS) == 0
    acc = manifest(tmp_path / "t")["accounting"]
    assert acc["records_in"] == acc["records_out"] == 4


def test_movie_captions_wrap_to_fit_the_frame():
    from PIL import ImageFont

    from pipelines.machinery.movies import LINE, frames, wrap
    from schemas import codec
    from schemas.fake import fake_records

    font = ImageFont.load_default()
    episode = fake_records("episode", 1, seed=3, image_size=16, num_steps=3)[0]
    episode["episode_id"] = "scripted-train-s123456-0001234-with-a-long-source-name"
    episode = codec.decode(codec.encode(episode))
    movie = frames(episode, scale=16)
    width = 16 * 16
    lines = wrap(f"{episode['episode_id']}  step 0/3  open 88mm  h=0.200", font, width - 8)
    assert len(lines) >= 2 and all(font.getlength(line) <= width - 8 for line in lines)
    assert "".join(lines).replace(" ", "") == f"{episode['episode_id']}step0/3open88mm" \
                                              "h=0.200"
    # Every frame the same size, with room for every caption line; nothing drawn in the
    # right margin, where a cut-off caption would run into the edge.
    assert {f.shape for f in movie} == {movie[0].shape}
    assert movie[0].shape[0] >= 16 * 16 + LINE * (len(lines) + 1)
    for frame in movie:
        assert (frame[16 * 16:, -3:] == 20).all()


def test_an_aimed_scripted_collection_says_so_in_its_identity_and_label():
    from pipelines.jobs.collect import make_plan
    from schemas.config import load_config

    blind = make_plan(load_config("demo"), "unused", None)
    assert "scripted_aim_radius" not in blind.identity()
    assert blind.scripted_aim_radius is None and "+aim" not in blind.policy_label
    cfg = load_config("demo", overrides=["collect.scripted_aim=object",
                                         "collect.scripted_aim_radius=0.08"])
    aimed = make_plan(cfg, "unused", None)
    assert aimed.identity()["scripted_aim_radius"] == 0.08
    assert aimed.policy_label.endswith("+aim<=0.08")
    # Only the scripted policy aims.
    random = make_plan(load_config("demo", overrides=["collect.policy=random",
                                                      "collect.scripted_aim=object"]),
                       "unused", None)
    assert random.scripted_aim_radius is None
