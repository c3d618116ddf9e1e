"""Unaligned image folders for eriklindernoren's CycleGAN: <root>/{train,test}/{A,B}/*.png.

Domain A: soft squares; domain B: soft discs, each in a random colour, place and size on a
shaded background, so a generator can learn to map one shape onto the other.
"""

import argparse
import os

import numpy as np
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="../../data/shapes2discs")
parser.add_argument("--train", type=int, default=16)
parser.add_argument("--test", type=int, default=5)
parser.add_argument("--size", type=int, default=40)
args = parser.parse_args()

rng = np.random.default_rng(0)
s = args.size
ys, xs = np.mgrid[0:s, 0:s] / s


def image(kind: str) -> np.ndarray:
    bg = rng.uniform(0.05, 0.35, 3)[:, None, None] * (0.6 + 0.4 * ys)[None]
    cy, cx = rng.uniform(0.3, 0.7, 2)
    r = rng.uniform(0.15, 0.28)
    square = np.maximum(abs(ys - cy), abs(xs - cx))
    dist = square if kind == "A" else np.hypot(ys - cy, xs - cx)
    shape = 1 / (1 + np.exp((dist - r) * 40))
    colour = rng.uniform(0.4, 1.0, 3)[:, None, None]
    img = bg * (1 - shape) + colour * shape + rng.normal(0, 0.02, (3, s, s))
    return (np.clip(img, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)


for mode, n in (("train", args.train), ("test", args.test)):
    for kind in ("A", "B"):
        folder = os.path.join(args.root, mode, kind)
        os.makedirs(folder, exist_ok=True)
        for i in range(n):
            Image.fromarray(image(kind)).save(os.path.join(folder, f"{i:03d}.png"))
