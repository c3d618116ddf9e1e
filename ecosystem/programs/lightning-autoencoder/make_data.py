"""Synthetic MNIST in torchvision's raw layout under each root: <root>/MNIST/raw/*-ubyte.

lightning.pytorch.demos.mnist_datamodule's MNIST() first builds torchvision's MNIST at ./data
(to see whether torchvision's copy is reachable), then the example's at examples/Datasets; both
find the uncompressed idx files and skip the download. The example splits the training set
[55000, 5000], so it must hold exactly 60000 images. Each class is a fixed set of random
strokes, shifted by up to 2 pixels, with random intensity and noise (uint8, bright on black).
"""

import argparse
import os
import struct

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--root", nargs="+", default=["data", "examples/Datasets"])
parser.add_argument("--train", type=int, default=60000)
parser.add_argument("--test", type=int, default=1000)
args = parser.parse_args()

rng = np.random.default_rng(0)
ys, xs = np.mgrid[0:28, 0:28]


def stroke(canvas, p0, p1, width=1.2):
    d = np.array(p1, float) - np.array(p0, float)
    t = np.clip(((ys - p0[0]) * d[0] + (xs - p0[1]) * d[1]) / max(d @ d, 1e-6), 0, 1)
    dist = np.hypot(ys - (p0[0] + t * d[0]), xs - (p0[1] + t * d[1]))
    np.maximum(canvas, np.clip(1.5 - dist / width, 0, 1), out=canvas)


protos = []
for _ in range(10):
    canvas = np.zeros((28, 28))
    pts = rng.integers(6, 22, size=(4, 2))
    for a, b in zip(pts[:-1], pts[1:]):
        stroke(canvas, a, b)
    protos.append(canvas)
protos = np.stack(protos)


def make(n):
    labels = rng.integers(0, 10, n)
    shifts = rng.integers(-2, 3, (n, 2))
    images = np.empty((n, 28, 28))
    for dy in range(-2, 3):  # one roll per shift, not per image
        for dx in range(-2, 3):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            images[sel] = np.roll(protos, (dy, dx), axis=(1, 2))[labels[sel]]
    images *= rng.uniform(0.7, 1.0, (n, 1, 1))
    images = np.clip(images + rng.normal(0, 0.08, images.shape) * (images > 0), 0, 1)
    return (images * 255).astype(np.uint8), labels.astype(np.uint8)


def write(prefix, images, labels):
    with open(prefix + "-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28))
        f.write(images.tobytes())
    with open(prefix + "-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)))
        f.write(labels.tobytes())


splits = {"train": make(args.train), "t10k": make(args.test)}
for root in args.root:
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for name, (images, labels) in splits.items():
        write(os.path.join(raw, name), images, labels)
