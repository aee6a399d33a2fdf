"""Episodes as movies: each step's camera image scaled up over a caption (step, gripper, height,
action, reward; the outcome on the last frame), written as GIF or MP4."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from schemas import fs, mdp
from schemas.errors import UserError

LINE = 13  # pixels per line of caption text


def wrap(text: str, font, width: int) -> list[str]:
    """``text`` broken into lines that fit ``width`` pixels: at spaces, and inside a word too
    long for a line of its own."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for ch in word:
            if line and font.getlength(line + ch) > width:
                lines.append(line)
                line = ""
            line += ch
    return lines + [line]


def frames(episode: dict, scale: int) -> list[np.ndarray]:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    images = episode["observation/image"]
    h, w = images.shape[1:3]
    scale = scale or max(1, 256 // w)
    out = []
    n = int(episode["num_steps"])
    captions = []
    for t in range(n + 1):
        a = episode["action"][t]
        closed = "closed" if episode["observation/gripper_closed"][t] > 0.5 else "open"
        closed += f" {1000 * episode['observation/gripper_opening'][t]:.0f}mm"
        caption = [(f"{episode['episode_id']}  step {t}/{n}  {closed}  "
                    f"h={episode['observation/height'][t]:.3f}", (255, 255, 255))]
        if t < n:
            grip = ("close" if a[mdp.CLOSE] > 0.5 else
                    "open" if a[mdp.OPEN] > 0.5 else "-")
            end = " END" if a[mdp.TERMINATE] > 0.5 else ""
            caption.append((f"t=({a[0]:+.2f},{a[1]:+.2f},{a[2]:+.2f}) g={grip}{end} "
                            f"r={episode['reward'][t]:+.2f}", (200, 200, 120)))
        else:
            ok = bool(episode["success"])
            caption.append(("SUCCESS" if ok else "failure",
                            (80, 230, 80) if ok else (230, 80, 80)))
        captions.append([(line, colour) for text, colour in caption
                         for line in wrap(text, font, w * scale - 8)])
    # One strip height for the whole movie (every frame the same size), enough for the longest.
    strip = 4 + LINE * max(len(c) for c in captions)
    for t, caption in enumerate(captions):
        canvas = Image.new("RGB", (w * scale, h * scale + strip), (20, 20, 20))
        canvas.paste(Image.fromarray(images[t]).resize((w * scale, h * scale), Image.NEAREST))
        draw = ImageDraw.Draw(canvas)
        for i, (line, colour) in enumerate(caption):
            draw.text((4, h * scale + 2 + LINE * i), line, fill=colour, font=font)
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
