"""Training input: labelled shards on disk -> batches of (inputs, target), via tf.data.

    files of each dataset --interleave--> records --weighted mix--> shuffle --> batch
        --> parse (schemas.tf_codec) --> augment (training only) --> prefetch

Shards are checked before any tensor flows: every file's first record must be a labelled
transition of a known schema version with the image shape the model expects, so a wrong file
fails with its name rather than deep inside TensorFlow. Records past the first are still checked
for their version in the graph, and that error names the file too.

Augmentation (appendix D.1) is a random crop (pad by ``crop_pad`` pixels, crop back) and brightness
[-0.125, 0.125], contrast [0.5, 1.5] and saturation [0.5, 1.5], drawn per image from stateless
seeds indexed by the batch number, so a resumed run sees the same augmentations.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from schemas import codec, fs, tfrecord_io
from schemas.errors import RecordError, UserError
from schemas.tf_codec import parse_batch

KIND = "labelled_transition"
# Every job publishes a dataset directory by writing this file last (DESIGN.md).
DATASET_MANIFEST = "manifest.json"


def expand(datasets) -> list[tuple[list[str], float]]:
    """``[(glob or list of globs, weight), ...]`` -> ``[(sorted files, weight), ...]``.

    A directory stands for its ``*.tfrecord*`` shards and must hold the ``manifest.json`` its
    writer publishes last, so that a half-written dataset is never trained on.
    """
    out = []
    for patterns, weight in datasets:
        if isinstance(patterns, str):
            patterns = [patterns]
        files = []
        for pattern in patterns:
            matched = fs.glob(pattern)
            if not matched and fs.exists(pattern):  # a dataset directory
                if not fs.exists(fs.join(pattern, DATASET_MANIFEST)):
                    raise UserError(f"{pattern}: no {DATASET_MANIFEST} (the job that writes this "
                                    "dataset has not finished; or pass a glob of its shards)")
                matched = fs.glob(fs.join(pattern, "*.tfrecord*"))
            if not matched:
                raise UserError(f"{pattern}: no labelled shards match")
            files.extend(matched)
        if not weight > 0:
            raise UserError(f"dataset {patterns[0]}: weight must be positive, got {weight}")
        out.append((sorted(set(files)), float(weight)))
    if not out:
        raise UserError("no training datasets given")
    return out


def check_shards(paths, image_shape) -> None:
    """UserError naming the first file whose first record is not a usable labelled transition."""
    for path in paths:
        try:
            first = next(tfrecord_io.iter_raw(path), None)
            if first is None:
                raise UserError(f"{path}: empty shard")
            record = codec.decode(first.data)
        except RecordError as exc:
            raise exc.located(path, 0) from None
        if record["kind"] != KIND:
            raise UserError(f"{path}: holds {record['kind']} records, expected {KIND} "
                            "(run relabel first?)")
        shape = tuple(int(d) for d in record["image_shape"])
        if shape != tuple(image_shape):
            raise UserError(f"{path}: images are {shape} but the model expects "
                            f"{tuple(image_shape)} (robot.image_size)")


def _records(files: list[str], seed: int, training: bool) -> tf.data.Dataset:
    names = tf.data.Dataset.from_tensor_slices(files)
    if training:
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    return names.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP").map(lambda r: (r, f)),
        cycle_length=min(len(files), 8), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_dataset(datasets, spec, batch_size: int, *, training: bool = True, seed: int = 0,
                 shuffle_buffer: int = 1000, augment: bool = True, crop_pad: int = 4,
                 check: bool = True) -> tf.data.Dataset:
    """Batches ``(inputs, target)``; ``inputs`` keyed by ``spec.input_names``.

    ``datasets``: ``[(glob, weight), ...]``; each batch draws from dataset i with probability
    proportional to its weight. Training input repeats forever; evaluation input is one pass.
    """
    return from_files(expand(datasets), spec, batch_size, training=training, seed=seed,
                      shuffle_buffer=shuffle_buffer, augment=augment, crop_pad=crop_pad,
                      check=check)


def from_files(expanded, spec, batch_size: int, *, training: bool = True, seed: int = 0,
               shuffle_buffer: int = 1000, augment: bool = True, crop_pad: int = 4,
               check: bool = True) -> tf.data.Dataset:
    """``make_dataset`` over ``expand``'s output: ``[(files, weight), ...]``."""
    image_shape = (spec.image_size, spec.image_size, 3)
    if check:
        for files, _ in expanded:
            check_shards(files, image_shape)
    streams = [_records(files, seed + i, training) for i, (files, _) in enumerate(expanded)]
    if len(streams) == 1:
        records = streams[0]
    else:
        total = sum(w for _, w in expanded)
        records = tf.data.Dataset.sample_from_datasets(
            streams, weights=[w / total for _, w in expanded], seed=seed,
            stop_on_empty_dataset=training)
    if training:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    batches = records.batch(batch_size, drop_remainder=training)
    batches = tf.data.Dataset.zip((batches, tf.data.Dataset.counter()))
    names = spec.input_names + ("target",)
    do_augment = training and augment

    def parse(pair, index):
        serialized, sources = pair
        parsed = parse_batch(serialized, KIND, image_shape, names=names, sources=sources)
        inputs = {name: parsed[name] for name in spec.input_names}
        if do_augment:
            inputs["observation/image"] = augment_images(
                inputs["observation/image"], tf.stack([tf.constant(seed, tf.int64), index]),
                crop_pad)
        return inputs, parsed["target"]

    return batches.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).prefetch(tf.data.AUTOTUNE)


def augment_images(images: tf.Tensor, seed: tf.Tensor, crop_pad: int) -> tf.Tensor:
    """Random crop and colour jitter of a uint8 batch [B, H, W, 3]; same shape and dtype out."""
    crop_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    return colour_jitter(random_crop(images, crop_seed, crop_pad), colour_seed)


def random_crop(images: tf.Tensor, seed: tf.Tensor, pad: int) -> tf.Tensor:
    """Pad each side by ``pad`` pixels (mirrored) and cut a window of the original size."""
    if pad == 0:
        return images
    b = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    padded = tf.pad(tf.cast(images, tf.float32), [[0, 0], [pad, pad], [pad, pad], [0, 0]],
                    mode="SYMMETRIC")
    offsets = tf.cast(tf.random.stateless_uniform((b, 2), seed, 0, 2 * pad + 1, tf.int32),
                      tf.float32)
    oy, ox = offsets[:, 0], offsets[:, 1]
    ph, pw = float(h + 2 * pad - 1), float(w + 2 * pad - 1)
    # Boxes on pixel centres: bilinear sampling at whole pixels is an exact crop, batched.
    boxes = tf.stack([oy / ph, ox / pw, (oy + h - 1) / ph, (ox + w - 1) / pw], 1)
    crops = tf.image.crop_and_resize(padded, boxes, tf.range(b), (h, w))
    return tf.cast(tf.round(crops), images.dtype)


def colour_jitter(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Brightness, contrast, saturation (appendix D.1 ranges), drawn per image."""
    b = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)

    def per_image(s, lo, hi):
        return tf.random.stateless_uniform((b, 1, 1, 1), s, lo, hi)

    x = tf.cast(images, tf.float32) / 255.0
    x = x + per_image(seeds[0], -0.125, 0.125)
    mean = tf.reduce_mean(x, axis=(1, 2), keepdims=True)
    x = (x - mean) * per_image(seeds[1], 0.5, 1.5) + mean
    gray = tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True)
    x = (x - gray) * per_image(seeds[2], 0.5, 1.5) + gray
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)


def in_memory_batch(dataset: tf.data.Dataset):
    """One batch of a dataset, as constant tensors (the benchmark's synthetic input)."""
    inputs, target = next(iter(dataset))
    return {k: tf.constant(np.asarray(v)) for k, v in inputs.items()}, tf.constant(target)
