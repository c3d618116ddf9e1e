"""Synthetic MNIST in torchvision's raw layout (<root>/MNIST/raw/*-idx?-ubyte, uncompressed).

torchvision's MNIST only checks that these four files exist, so it never downloads.
Each class c is a bright 8x8 square at a class-specific place of a noisy 28x28 image.
"""

import argparse
import os
import struct

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--root", default="data")
p.add_argument("--train", type=int, default=2000)
p.add_argument("--test", type=int, default=500)
a = p.parse_args()

rng = np.random.default_rng(0)


def make(n):
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = 2 + 6 * (c // 4), 2 + 6 * (c % 4)
        x[i, r : r + 8, col : col + 8] += 180 + rng.normal(0, 10)
    return np.clip(x, 0, 255).astype(np.uint8), y


def write(prefix, x, y):
    with open(prefix + "-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(x), 28, 28))
        f.write(x.tobytes())
    with open(prefix + "-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 2049, len(y)))
        f.write(y.tobytes())


raw = os.path.join(a.root, "MNIST", "raw")
os.makedirs(raw, exist_ok=True)
write(os.path.join(raw, "train"), *make(a.train))
write(os.path.join(raw, "t10k"), *make(a.test))
print("wrote", raw)
