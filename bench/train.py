"""Training throughput: the tf.data input pipeline vs the train step, measured in one run.

Writes GZIP shards of 128x128x8 patches (``lsm/v1``, like ``landslides export``), then
measures on this machine:

(a) input pipeline: patches/s through ``model.data.make_dataset`` in training mode, from
    the compressed shards, with every augmentation switched on (flips, 90 and free
    rotations, shear, blur, sharpening) and no cache, so nothing is read from memory;
(b) train step: patches/s of ``model.fit`` steps of the default U-Net (16 base filters,
    depth 5, Tversky loss, Adam, the four landslide metrics) on batches already in memory,
    in float32 and under the ``mixed_bfloat16`` policy (``--mixed-precision
    mixed_bfloat16``; faster than float32 only on CPUs with native bfloat16, see
    ``model.cpu.cpu_has_bf16``; the output names the CPU).

It prints them and the ratio (a / b, float32). Goal: >= 3, i.e. the input pipeline is never
the bottleneck of training.

    .venv/bin/python bench/train.py [--patches 256] [--batch 32] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras

from model.augment import AugmentConfig
from model.cpu import describe_cpu
from model.data import find_shards, shard_dataset
from model.distribute import dtype_policy
from model.losses import get_loss
from model.metrics import landslide_metrics
from model.schema import encode_patch
from model.unet import build_unet

BANDS = ("B2", "B3", "B4", "B8", "B11", "B12", "DEM", "slope")
AUGMENT = AugmentConfig(flip_h=True, flip_v=True, rot90=True, rot45=True, shear=0.2, blur=0.3,
                        sharpen=0.3)


def write_shards(root: str, n_patches: int, size: int, n_shards: int = 4) -> None:
    """Shards + manifest of random but plausible patches (reflectance, DEM, slope)."""
    rng = np.random.default_rng(0)
    per = -(-n_patches // n_shards)
    for split, count in (("train", n_patches), ("val", per)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        shards = n_shards if split == "train" else 1
        for s in range(shards):
            path = os.path.join(root, split, f"{split}-{s:05d}-of-{shards:05d}.tfrecord.gz")
            with tf.io.TFRecordWriter(path, options="GZIP") as w:
                for i in range(min(per, count - s * per)):
                    image = rng.normal(0.15, 0.05, (size, size, len(BANDS))).astype(np.float32)
                    image[..., 6] = rng.normal(3000, 300, (size, size))
                    image[..., 7] = rng.uniform(0, 60, (size, size))
                    mask = (rng.random((size, size)) < 0.1).astype(np.uint8)
                    w.write(encode_patch(image, mask, BANDS, f"k/{s}_{i}", "EPSG:32645",
                                         (10, 0, 600000, 0, -10, 3100000), "2020-01-01"))
    stats = {b: {"mean": 0.15, "std": 0.05} for b in BANDS}
    stats["DEM"], stats["slope"] = {"mean": 3000, "std": 300}, {"mean": 30, "std": 17}
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump({"bands": list(BANDS), "patch_size": size, "stats": stats,
                   "patches": {"train": n_patches, "val": per}}, f)


def input_throughput(root: str, batch: int, batches: int) -> float:
    """Patches/s of the augmented training pipeline from the shards."""
    shards = find_shards(root)
    ds = shard_dataset(shards, shards.files["train"], BANDS, batch, training=True,
                       augment_config=AUGMENT, seed=0, repeat=True, cache=False)
    it = iter(ds)
    for _ in range(3):  # warm up: threads, autotuning, file handles
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(it)
    images.numpy()
    return batches * batch / (time.perf_counter() - start)


class _Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def train_step_throughput(root: str, batch: int, steps: int, base_filters: int,
                          depth: int, policy: str = "float32") -> float:
    """Patches/s of model.fit steps on batches already in memory (second epoch timed)."""
    shards = find_shards(root)
    x, y = next(iter(shard_dataset(shards, shards.files["train"], BANDS, batch)))
    ds = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    with dtype_policy(policy):
        model = build_unet(BANDS, base_filters, depth, mean=[0.15] * 6 + [3000, 30],
                           std=[0.05] * 6 + [300, 17], bn_momentum=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("tversky"),
                  metrics=landslide_metrics())
    timer = _Timer()
    model.fit(ds, epochs=2, steps_per_epoch=steps, callbacks=[timer], shuffle=False, verbose=0)
    return steps * batch / timer.seconds


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patches", type=int, default=256, help="Training patches written.")
    p.add_argument("--size", type=int, default=128, help="Patch side.")
    p.add_argument("--batch", type=int, default=32, help="Batch size.")
    p.add_argument("--steps", type=int, default=6, help="Timed train steps.")
    p.add_argument("--input-batches", type=int, default=24, help="Timed input batches.")
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as root:
        write_shards(root, args.patches, args.size)
        pipeline = input_throughput(root, args.batch, args.input_batches)
        step = train_step_throughput(root, args.batch, args.steps, args.base_filters,
                                     args.depth)
        step_bf16 = train_step_throughput(root, args.batch, args.steps, args.base_filters,
                                          args.depth, "mixed_bfloat16")
    ratio = pipeline / step
    print(f"patches {args.size}x{args.size}x{len(BANDS)}, batch {args.batch}, U-Net "
          f"{args.base_filters} filters depth {args.depth}, GPUs: "
          f"{len(tf.config.list_physical_devices('GPU'))}; {describe_cpu()}")
    print(f"input pipeline (GZIP shards, parse, all augmentations): {pipeline:8.1f} patches/s")
    print(f"train step (model.fit on in-memory batches), float32:   {step:8.1f} patches/s")
    print(f"train step, mixed_bfloat16:                             {step_bf16:8.1f} patches/s "
          f"({step_bf16 / step:.2f}x float32)")
    print(f"ratio input / train step: {ratio:.1f} (goal >= 3)")
    return ratio


if __name__ == "__main__":
    main()
