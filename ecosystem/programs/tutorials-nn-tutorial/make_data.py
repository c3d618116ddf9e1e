"""Synthetic MNIST as the nn_tutorial reads it: data/mnist/mnist.pkl.gz, a gzipped pickle of
((x_train, y_train), (x_valid, y_valid), (x_test, y_test)) with float32 rows of 784 pixels in
[0, 1] and int64 labels (the layout of deeplearning.net's mnist.pkl.gz). The images are the
`examples-mnist` generator's (a fixed set of random strokes per class, shifted by up to 2
pixels, random intensity and noise); seeded.
"""

import argparse
import gzip
import pickle
from pathlib import Path

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="data/mnist/mnist.pkl.gz")
parser.add_argument("--train", type=int, default=3200)
parser.add_argument("--valid", type=int, default=1000)
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
    labels = rng.integers(0, 10, n).astype(np.int64)
    images = np.zeros((n, 784), np.float32)
    for i, c in enumerate(labels):
        dy, dx = rng.integers(-2, 3, 2)
        img = np.roll(protos[c], (dy, dx), axis=(0, 1)) * rng.uniform(0.7, 1.0)
        img = np.clip(img + rng.normal(0, 0.08, (28, 28)) * (img > 0), 0, 1)
        images[i] = np.round(img * 255).reshape(784) / 255.0
    return images, labels


out = Path(args.out)
out.parent.mkdir(parents=True, exist_ok=True)
with gzip.open(out, "wb") as f:
    pickle.dump((make(args.train), make(args.valid), make(args.valid)), f)
