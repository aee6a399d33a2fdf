"""Where training time goes: gradient steps/s, the FLOP rate they imply, and this machine's dense
matmul FLOP rate, measured in the same run. Prints one JSON line.

    python -m benchmarks.train_speed [--seconds 20] [--preset demo] [--set KEY=VALUE]

The trainer's own step (``model.train.Trainer.train_step``: online forward and backward, loss,
optimizer, Polyak update) runs on one batch held in memory, so input parsing does not count
(``benchmarks.train_input`` measures that). FLOPs are counted from the network's layers: a
convolution or dense layer costs 2 * MACs forward and twice that backward (gradients for the
inputs and for the weights), so a training step costs about three forward passes over the batch.
``flop_share`` splits that by part of the network: the image tower, the head's convolutions and
the dense layers. ``utilisation`` is the achieved FLOP rate over float32 matmul's on 1024x1024
matrices, the best a dense kernel does here.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import schemas  # noqa: E402,F401


def layer_macs(model) -> dict:
    """Multiply-accumulates per example of every Conv2D and Dense layer of a Keras model,
    nested models included, keyed by the layer's path."""
    import keras

    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.update({f"{layer.name}/{k}": v for k, v in layer_macs(layer).items()})
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            out[layer.name] = int(h * w * c_out * kh * kw * layer.input.shape[-1])
        elif isinstance(layer, keras.layers.Dense):
            out[layer.name] = int(layer.input.shape[-1] * layer.units)
    return out


def matmul_gflops(seconds: float, n: int = 1024) -> float:
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    step = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    step(a, b).numpy()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(a, b).numpy()
        count += 1
    return 2.0 * n ** 3 * count / (time.perf_counter() - start) / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="timing of each side, split into two alternated halves")
    parser.add_argument("--preset", default="demo", help="configuration preset (demo)")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="config override, e.g. model.preset=tiny")
    args = parser.parse_args(argv)

    import tempfile

    from benchmarks.train_input import _rate, write_shards
    from model.data import in_memory_batch
    from model.train import Trainer
    from schemas.config import load_config

    config = load_config(args.preset, overrides=args.overrides)
    with tempfile.TemporaryDirectory(prefix="qtopt-train-speed-") as tmp:
        pattern = write_shards(os.path.join(tmp, "labelled"), 256, 2, config.robot.image_size)
        trainer = Trainer(config, [(pattern, 1.0)], os.path.join(tmp, "work"))
        inputs, target = in_memory_batch(trainer.input_dataset)
        macs = layer_macs(trainer.online.model)
        half = args.seconds / 2
        steps, matmul = [], []
        for _ in range(2):   # alternate, so drifts in machine load hit both alike
            steps.append(_rate(trainer, lambda: (inputs, target), half))
            matmul.append(matmul_gflops(half))
    batch = config.train.batch_size
    per_example = sum(macs.values())
    step_flops = 3 * 2 * per_example * batch
    rate = sum(steps) / len(steps)
    achieved = rate * step_flops / 1e9
    peak = sum(matmul) / len(matmul)

    def share(test) -> float:
        return round(sum(v for k, v in macs.items() if test(k)) / per_example, 3)

    print(json.dumps({
        "steps_per_s": round(rate, 2), "gflop_per_step": round(step_flops / 1e9, 2),
        "achieved_gflops": round(achieved, 1), "matmul_gflops": round(peak, 1),
        "utilisation": round(achieved / peak, 3),
        "flop_share": {"tower_convs": share(lambda k: "tower" in k),
                       "head_convs": share(lambda k: "head" in k and "fc" not in k
                                           and "logit" not in k and "embed" not in k),
                       "dense": share(lambda k: "fc" in k or "logit" in k or "embed" in k)},
        "params": trainer.online.count_params(), "model": config.model.preset,
        "image_size": config.robot.image_size, "batch_size": batch, "preset": args.preset,
        "cores": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
