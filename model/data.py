"""Training input: labelled shards on disk -> batches of (inputs, target), via tf.data.

    files of each dataset --interleave--> records --weighted mix--> shuffle --> batch
        --> parse (schemas.tf_codec) --> augment (training only) --> prefetch

Shards are checked before any tensor flows: every file's first record must be a labelled
transition of a known schema version with the image shape the model expects, so a wrong file
fails with its name rather than deep inside TensorFlow. Records past the first are still checked
for their version in the graph, and that error names the file too.

Local shards are read by ``tf.data.TFRecordDataset`` directly. Remote ones (``gs://`` or any fsspec
URL) are first copied through ``schemas.fs`` into a local cache, because TensorFlow's own GCS client
cannot be pointed at another endpoint (an emulator, a private one) and a streamed Python generator
would make the input position impossible to checkpoint; errors still name the remote file.

Augmentation (appendix D.1) is a random crop (pad by ``crop_pad`` pixels, crop back) and brightness
[-0.125, 0.125], contrast [0.5, 1.5] and saturation [0.5, 1.5], drawn per image from stateless
seeds indexed by the batch number, so a resumed run sees the same augmentations.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from schemas import codec, fs, tfrecord_io
from schemas.datasets import MANIFEST, manifest_json
from schemas.errors import RecordError, UserError
from schemas.tf_codec import parse_batch

KIND = "labelled_transition"
# Cached shards unused for this long are deleted when a run stages its own, so that a finetune's
# chunks keep reusing the offline data while old epochs do not pile up.
CACHE_MAX_IDLE_S = 24 * 3600


def expand(datasets) -> list[tuple[list[str], float]]:
    """``[(glob or list of globs, weight), ...]`` -> ``[(sorted files, weight), ...]``.

    A directory stands for its ``*.tfrecord*`` shards and must hold the ``manifest.json`` its
    writer publishes last, so that a half-written dataset is never trained on. Names starting
    with ``_`` or ``.`` in a glob's matches (``_SUCCESS.json``) are skipped.
    """
    out = []
    for patterns, weight in datasets:
        if isinstance(patterns, str):
            patterns = [patterns]
        files = []
        for pattern in patterns:
            # Names starting with _ or . are a job's bookkeeping, never shards.
            matched = [m for m in fs.glob(pattern) if not fs.basename(m).startswith(("_", "."))]
            if not matched and fs.exists(pattern):  # a dataset directory
                if not fs.exists(fs.join(pattern, MANIFEST)):
                    raise UserError(f"{pattern}: no {MANIFEST} (the job that writes this "
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


def dataset_cells(expanded) -> dict:
    """{cell identity: dataset directory} of the published datasets ``expand``'s files lie in,
    from their manifests; shards outside a published dataset say nothing."""
    from schemas.cells import of_manifest

    found = {}
    for directory in sorted({f.rsplit("/", 1)[0] for files, _ in expanded for f in files}):
        manifest = manifest_json(directory)
        if manifest is not None:
            found.setdefault(of_manifest(manifest), directory)
    return found


def default_cache_dir() -> str:
    return os.path.join(fs.staging_root(), "shards")


def stage(files: list[str], cache_dir: str | None = None) -> list[str]:
    """Local paths for ``files``: local ones as they are, remote ones copied into ``cache_dir``.

    A copy is named after the URL and the object's version (generation or checksum, else size
    and mtime), so a shard republished under the same name is fetched again, and a finished
    copy is never rewritten: concurrent runs on one machine can share the cache.
    """
    if not any(fs.is_remote(f) for f in files):
        return list(files)
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    now = time.time()
    for name in os.listdir(cache_dir):
        path = os.path.join(cache_dir, name)
        try:
            if now - os.path.getmtime(path) > CACHE_MAX_IDLE_S:
                os.remove(path)
        except OSError:
            pass

    def fetch(url: str) -> str:
        filesystem, inner = fs.filesystem(url)
        info = filesystem.info(inner)
        version = [str(info.get(k)) for k in ("generation", "md5Hash", "crc32c", "etag",
                                               "mtime", "LastModified", "size") if info.get(k)]
        key = hashlib.sha256("\0".join([url] + version).encode()).hexdigest()[:20]
        local = os.path.join(cache_dir, f"{key}-{os.path.basename(url)}")
        if os.path.exists(local) and os.path.getsize(local) == int(info["size"]):
            os.utime(local)
            return local
        tmp = f"{local}{fs.TMP_MARKER}{uuid.uuid4().hex[:8]}"
        try:
            with fs.open_file(url, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            if os.path.getsize(tmp) != int(info["size"]):
                raise UserError(f"{url}: copied {os.path.getsize(tmp)} bytes of "
                                f"{info['size']} (changed while reading?)")
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return local

    with ThreadPoolExecutor(max_workers=8) as pool:   # network-bound: overlap the requests
        return list(pool.map(lambda f: f if not fs.is_remote(f) else fetch(f), files))


def check_shards(paths, image_shape, names=None) -> None:
    """UserError naming the first file whose first record is not a usable labelled transition.

    ``names``: what to call each file in errors (the remote URL of a staged copy).
    """
    for i, local in enumerate(paths):
        path = names[i] if names is not None else local
        try:
            first = next(tfrecord_io.iter_raw(local), None)
            if first is None:
                raise UserError(f"{path}: empty shard")
            record = codec.decode(first.data)
        except RecordError as exc:
            raise type(exc)(exc.reason, path, 0 if exc.index is None else exc.index,
                            exc.offset) from None
        if record["kind"] != KIND:
            raise UserError(f"{path}: holds {record['kind']} records, expected {KIND} "
                            "(run relabel first?)")
        shape = tuple(int(d) for d in record["image_shape"])
        if shape != tuple(image_shape):
            raise UserError(f"{path}: images are {shape} but the model expects "
                            f"{tuple(image_shape)} (robot.image_size)")


def find_damaged(expanded, cache_dir: str | None = None) -> RecordError | None:
    """The first fault in any file of ``expand``'s output, by our own CRC-checking reader,
    located by file (the remote URL of a staged copy), record and offset; None if all read.

    TensorFlow's reader reports a damaged record without naming its file; this finds it."""
    for files, _ in expanded:
        for local, name in zip(stage(files, cache_dir), files):
            for item in tfrecord_io.scan(local):
                if isinstance(item, RecordError):
                    return RecordError(item.reason, name, item.index, item.offset)
    return None


def _records(files: list[str], seed: int, training: bool, sources=None,
             shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """(record, file name for errors); ``sources`` names staged copies by their URLs.
    ``shard`` (i, n): keep every n-th record from the i-th."""
    names = tf.data.Dataset.from_tensor_slices(files if sources is None else (files, sources))
    if training:
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()

    def read(f, source=None):
        return tf.data.TFRecordDataset(f, compression_type="GZIP").map(
            lambda r: (r, f if source is None else source))

    records = names.interleave(read, cycle_length=min(len(files), 8), block_length=1,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return records if shard is None else records.shard(shard[1], shard[0])


def _shard_files(expanded, shard):
    """``expanded`` cut to part i of n (``shard``), with the record shard each dataset still
    needs: a dataset of at least n files gives every n-th file to each part; one of fewer is
    read whole by every part, which keeps every n-th record (all parts draw the same stream,
    seeded alike, so the parts are disjoint)."""
    if shard is None:
        return expanded, [None] * len(expanded)
    i, n = shard
    cut, record_shards = [], []
    for files, weight in expanded:
        whole = len(files) < n
        cut.append((files if whole else files[i::n], weight))
        record_shards.append(shard if whole else None)
    return cut, record_shards


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
               check: bool = True, cache_dir: str | None = None,
               shard: tuple[int, int] | None = None,
               compile_augment: bool = False, weights: tf.Variable | None = None
               ) -> tf.data.Dataset:
    """``make_dataset`` over ``expand``'s output: ``[(files, weight), ...]``.

    Remote files are staged into ``cache_dir`` first (default: ``default_cache_dir()``).
    ``shard`` (i, n): the part i of n of every dataset that worker i of n trains on; batches
    are then ``batch_size`` records of that part. ``compile_augment``: augment with
    ``compiled_augment_images``. ``weights``: a float variable, one weight per dataset, read at
    every draw instead of the weights in ``expanded``: assigning it changes the mix of a running
    pipeline (after the records already in its shuffle buffer), without building a new one.
    """
    image_shape = (spec.image_size, spec.image_size, 3)
    expanded, record_shards = _shard_files(expanded, shard)
    local = [stage(files, cache_dir) for files, _ in expanded]
    if check:
        for (files, _), copies in zip(expanded, local):
            check_shards(copies, image_shape, names=files)
    streams = [_records(copies, seed + i, training,
                        sources=None if copies == files else files, shard=record_shard)
               for i, ((files, _), copies, record_shard) in enumerate(
                   zip(expanded, local, record_shards))]
    if len(streams) == 1:
        records = streams[0]
    else:
        total = sum(w for _, w in expanded)
        mix = [w / total for _, w in expanded]
        if weights is not None:
            mix = tf.data.Dataset.from_tensors(0).repeat().map(
                lambda _: weights.read_value() / tf.reduce_sum(weights))
        records = tf.data.Dataset.sample_from_datasets(
            streams, weights=mix, seed=seed, stop_on_empty_dataset=training)
    if training:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    batches = records.batch(batch_size, drop_remainder=training)
    # Batch k of worker i of n draws the augmentations of global slot k * n + i: the workers'
    # parts of one global batch are augmented independently.
    counter = tf.data.Dataset.counter() if shard is None else \
        tf.data.Dataset.counter(shard[0], shard[1])
    batches = tf.data.Dataset.zip((batches, counter))
    names = spec.input_names + ("target",)
    do_augment = training and augment
    augment_fn = compiled_augment_images if compile_augment else augment_images

    def parse(pair, index):
        serialized, sources = pair
        parsed = parse_batch(serialized, KIND, image_shape, names=names, sources=sources)
        inputs = {name: parsed[name] for name in spec.input_names}
        if do_augment:
            inputs["observation/image"] = augment_fn(
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
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="SYMMETRIC")
    offsets = tf.random.stateless_uniform((b, 2), seed, 0, 2 * pad + 1, tf.int32)
    rows = offsets[:, :1] + tf.range(h)[None]
    cols = offsets[:, 1:] + tf.range(w)[None]
    # Two batched gathers: an exact crop (bilinear crop_and_resize read past the edge now and
    # then), and a few times cheaper than it under XLA.
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


# The same augmentation compiled by XLA (for ``train.jit_compile``): about a sixth of the CPU
# time, which on two cores the input pipeline takes from the gradient step.
compiled_augment_images = tf.function(augment_images, jit_compile=True)


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
