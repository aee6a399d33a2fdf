"""``qtopt render FILE --out movie.gif``: watch what a policy did, episode by episode.

Frames are the episode's camera images, scaled up, with a strip under each showing the step,
the gripper state and height, the action taken and the reward; an episode ends on a frame that
says whether the grasp succeeded. ``--episodes`` picks episodes by index in the file or by
episode id (default: the first). ``.gif`` needs only Pillow; ``.mp4`` uses imageio-ffmpeg
(``pip install -e '.[render]'``).
"""

from __future__ import annotations

import argparse

import numpy as np

from schemas import fs, tfrecord_io
from schemas.errors import RecordError, UserError

STRIP = 30  # pixels of text under each frame


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="episode TFRecord file (local or gs://)")
    parser.add_argument("--out", "-o", required=True, metavar="MOVIE",
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


def _label(draw, font, text: str, y: int, width: int, colour=(255, 255, 255)) -> None:
    draw.text((4, y), text, fill=colour, font=font)


def frames(episode: dict, scale: int) -> list[np.ndarray]:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    images = episode["observation/image"]
    h, w = images.shape[1:3]
    scale = scale or max(1, 256 // w)
    out = []
    n = int(episode["num_steps"])
    for t in range(n + 1):
        canvas = Image.new("RGB", (w * scale, h * scale + STRIP), (20, 20, 20))
        canvas.paste(Image.fromarray(images[t]).resize((w * scale, h * scale), Image.NEAREST))
        draw = ImageDraw.Draw(canvas)
        a = episode["action"][t]
        closed = "closed" if episode["observation/gripper_closed"][t] > 0.5 else "open"
        closed += f" {1000 * episode['observation/gripper_opening'][t]:.0f}mm"
        _label(draw, font, f"{episode['episode_id']}  step {t}/{n}  {closed}  "
               f"h={episode['observation/height'][t]:.3f}", h * scale + 2, w * scale)
        if t < n:
            grip = "close" if a[5] > 0.5 else ("open" if a[6] > 0.5 else "-")
            _label(draw, font, f"t=({a[0]:+.2f},{a[1]:+.2f},{a[2]:+.2f}) g={grip}"
                   f"{' END' if a[7] > 0.5 else ''} r={episode['reward'][t]:+.2f}",
                   h * scale + 15, w * scale, (200, 200, 120))
        else:
            ok = bool(episode["success"])
            _label(draw, font, "SUCCESS" if ok else "failure", h * scale + 15, w * scale,
                   (80, 230, 80) if ok else (230, 80, 80))
        out.append(np.asarray(canvas))
    return out


def write_movie(path: str, movie: list[np.ndarray], fps: float) -> None:
    lower = path.lower()
    if lower.endswith(".gif"):
        from PIL import Image

        images = [Image.fromarray(f) for f in movie]
        with fs.atomic_write(path, "wb") as f:
            images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                           duration=int(1000 / fps), loop=0)
    elif lower.endswith(".mp4"):
        try:
            import imageio_ffmpeg
        except ImportError:
            raise UserError("--out .mp4 needs imageio-ffmpeg (pip install -e '.[render]'); "
                            "or write a .gif") from None
        import os
        import tempfile

        h, w = movie[0].shape[:2]
        # Even sides: what yuv420p video needs.
        movie = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0))) for f in movie]
        fd, tmp = tempfile.mkstemp(suffix=".mp4")
        os.close(fd)
        try:
            writer = imageio_ffmpeg.write_frames(tmp, (w + w % 2, h + h % 2), fps=fps,
                                                 macro_block_size=1, quality=8)
            writer.send(None)
            for f in movie:
                writer.send(np.ascontiguousarray(f))
            writer.close()
            with open(tmp, "rb") as src:
                fs.write_bytes(path, src.read())
        finally:
            os.remove(tmp)
    else:
        raise UserError(f"--out {path}: use a .gif or .mp4 file name")


def run(args: argparse.Namespace) -> int:
    if args.fps <= 0:
        raise UserError(f"--fps must be > 0, got {args.fps}")
    if args.scale < 0:
        raise UserError(f"--scale must be >= 0, got {args.scale}")
    if not args.out.lower().endswith((".gif", ".mp4")):
        raise UserError(f"--out {args.out}: use a .gif or .mp4 file name")
    episodes = pick(args.path, args.episodes)
    movie = []
    for episode in episodes:
        movie.extend(frames(episode, args.scale))
        movie.extend([movie[-1]] * 2)  # hold the outcome frame
    write_movie(args.out, movie, args.fps)
    print(f"render: {len(episodes)} episodes, {len(movie)} frames -> {args.out}")
    return 0
