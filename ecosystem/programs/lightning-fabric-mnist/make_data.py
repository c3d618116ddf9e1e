"""Writes a small synthetic MNIST in torchvision's raw IDX layout (<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte),
so torchvision.datasets.MNIST finds it and skips the download. 28x28 uint8 digits-like images: one seeded stroke template
per class, shifted by up to 4 px, with heavy noise; classes interleaved (not sorted)."""

import os
import struct
import sys

import numpy as np

root = sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else "Datasets"
rng = np.random.default_rng(4)
templates = []
for _c in range(10):
    t = np.zeros((28, 28), np.float32)
    for _ in range(3):  # three random strokes per class
        (y0, x0), (y1, x1) = rng.integers(6, 22, 2), rng.integers(6, 22, 2)
        for s in np.linspace(0, 1, 40):
            y, x = int(round(y0 + s * (y1 - y0))), int(round(x0 + s * (x1 - x0)))
            t[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = 1.0
    templates.append(t)


def make(n):
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    imgs = np.empty((n, 28, 28), np.uint8)
    for i, c in enumerate(labels):
        im = np.roll(templates[c], tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
        im = np.clip(im * rng.uniform(0.7, 1.0) + rng.normal(0, 0.45, im.shape), 0, 1)
        imgs[i] = (im * 255).astype(np.uint8)
    return imgs, labels


raw = os.path.join(root, "MNIST", "raw")
os.makedirs(raw, exist_ok=True)
for prefix, n in (("train", 2048), ("t10k", 512)):
    imgs, labels = make(n)
    with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + imgs.tobytes())
    with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.tobytes())
