"""Synthetic MNIST in torchvision's raw layout: <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.

torchvision.datasets.MNIST finds the uncompressed idx files and skips the download. Each class is
a fixed set of random strokes on a 28x28 canvas; a sample is its class's strokes shifted by up to
2 pixels, with random intensity and noise (uint8, digits bright on black like MNIST). Labels are
shuffled, as in the real files.
"""

import argparse
import os
import struct

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="../data")
parser.add_argument("--train", type=int, default=3200)
parser.add_argument("--test", type=int, default=1000)
args = parser.parse_args()

rng = np.random.default_rng(0)


def stroke(canvas, p0, p1, width=1.2):
    ys, xs = np.mgrid[0:28, 0:28]
    d = np.array(p1, float) - np.array(p0, float)
    t = np.clip(((ys - p0[0]) * d[0] + (xs - p0[1]) * d[1]) / max(d @ d, 1e-6), 0, 1)
    dist = np.hypot(ys - (p0[0] + t * d[0]), xs - (p0[1] + t * d[1]))
    np.maximum(canvas, np.clip(1.5 - dist / width, 0, 1), out=canvas)


protos = []
for _c in range(10):
    canvas = np.zeros((28, 28))
    pts = rng.integers(6, 22, size=(4, 2))
    for a, b in zip(pts[:-1], pts[1:]):
        stroke(canvas, a, b)
    protos.append(canvas)


def make(n):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    for i, c in enumerate(labels):
        dy, dx = rng.integers(-2, 3, 2)
        img = np.roll(protos[c], (dy, dx), axis=(0, 1)) * rng.uniform(0.7, 1.0)
        img = np.clip(img + rng.normal(0, 0.08, (28, 28)) * (img > 0), 0, 1)
        images[i] = (img * 255).astype(np.uint8)
    return images, labels


def write(prefix, images, labels):
    with open(prefix + "-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28))
        f.write(images.tobytes())
    with open(prefix + "-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)))
        f.write(labels.tobytes())


raw = os.path.join(args.root, "MNIST", "raw")
os.makedirs(raw, exist_ok=True)
write(os.path.join(raw, "train"), *make(args.train))
write(os.path.join(raw, "t10k"), *make(args.test))
