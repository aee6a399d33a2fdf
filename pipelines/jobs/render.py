"""``qtopt render FILE --out movie.gif``: watch what a policy did, episode by episode.

    qtopt render runs/demo/episodes/scripted-train/episodes-s0-0000000-0000010.tfrecord.gz \\
                 --episodes 0,3 -o episodes.gif

Frames are the episode's camera images, scaled up, with a strip under each showing the step,
the gripper state and height, the action taken and the reward; an episode ends on a frame that
says whether the grasp succeeded. ``--episodes`` picks episodes by index in the file or by
episode id (default: the first). ``.gif`` needs only Pillow; ``.mp4`` uses imageio-ffmpeg
(``pip install -e '.[render]'``).
"""

from __future__ import annotations

import argparse

from pipelines.machinery.movies import frames, write_movie
from schemas import tfrecord_io
from schemas.errors import RecordError, UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="episode TFRecord file (local or gs://)")
    parser.add_argument("--output", "--out", "-o", required=True, metavar="MOVIE",
                        help="output file, .gif or .mp4")
    parser.add_argument("--episodes", default="0", metavar="LIST",
                        help="comma-separated indices in the file or episode ids, or 'all' "
                             "(default: 0)")
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second (default 4)")
    parser.add_argument("--scale", type=int, default=0,
                        help="pixels per image pixel (default: about 256 pixels wide)")


def pick(path: str, which: str) -> list[dict]:
    wanted = [w.strip() for w in which.split(",") if w.strip()]
    if not wanted:
        raise UserError("--episodes: empty list")
    chosen, found = {}, set()
    for index, record in enumerate(tfrecord_io.read_records(path)):
        if record["kind"] != "episode":
            raise RecordError(f"holds {record['kind']} records, not episodes", path)
        for w in wanted:
            if w == "all" or w == str(index) or w == record["episode_id"]:
                chosen[index] = record
                found.add(w)
    if "all" in wanted:
        found = set(wanted)
    missing = [w for w in wanted if w not in found]
    if missing:
        raise UserError(f"--episodes: {', '.join(missing)} not found in {path}")
    return [chosen[i] for i in sorted(chosen)]


def run(args: argparse.Namespace) -> int:
    if args.fps <= 0:
        raise UserError(f"--fps must be > 0, got {args.fps}")
    if args.scale < 0:
        raise UserError(f"--scale must be >= 0, got {args.scale}")
    if not args.output.lower().endswith((".gif", ".mp4")):
        raise UserError(f"--out {args.output}: use a .gif or .mp4 file name")
    episodes = pick(args.path, args.episodes)
    movie = []
    for episode in episodes:
        movie.extend(frames(episode, args.scale))
        movie.extend([movie[-1]] * 2)  # hold the outcome frame
    write_movie(args.output, movie, args.fps)
    print(f"render: {len(episodes)} episodes, {len(movie)} frames -> {args.output}")
    return 0
