"""Synthetic MNIST in torchvision's raw IDX layout (<root>/MNIST/raw/*-ubyte), so MNIST(download=True) finds it."""

import argparse
import os
import struct

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--root", required=True)
p.add_argument("--train", type=int, default=6400)
p.add_argument("--test", type=int, default=640)
a = p.parse_args()
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:28, 0:28]
# one smooth "digit" template per class: a ring/bar pattern of class-specific pose
templates = []
for c in range(10):
    ang = c * np.pi / 10
    cx, cy = 14 + 4 * np.cos(ang), 14 + 4 * np.sin(ang)
    r = np.hypot(xx - cx, yy - cy)
    ring = np.exp(-((r - 6 - (c % 3)) ** 2) / 3.0)
    bar = np.exp(-(((xx - 14) * np.cos(ang) + (yy - 14) * np.sin(ang)) ** 2) / 4.0) * (
        np.abs(r) < 10
    )
    templates.append(np.clip(ring + bar * (c % 2), 0, 1))
templates = np.stack(templates)


def make(n):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    shifts = rng.integers(-2, 3, (n, 2))
    imgs = np.empty((n, 28, 28), np.float32)
    for i in range(n):
        imgs[i] = np.roll(templates[labels[i]], tuple(shifts[i]), axis=(0, 1))
    imgs = imgs * rng.uniform(0.7, 1.0, (n, 1, 1)) + rng.normal(0, 0.05, imgs.shape)
    return (np.clip(imgs, 0, 1) * 255).astype(np.uint8), labels


raw = os.path.join(a.root, "MNIST", "raw")
os.makedirs(raw, exist_ok=True)
for split, n in (("train", a.train), ("t10k", a.test)):
    imgs, labels = make(n)
    with open(os.path.join(raw, f"{split}-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + imgs.tobytes())
    with open(os.path.join(raw, f"{split}-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.tobytes())
