"""Synthetic CMP Facades in pix2pix's on-disk layout: <root>/{train,val}/N.jpg, each image the
photo (A, left half) beside its label map (B, right half), 256 x 256 each.

A facade is a wall with a grid of windows and a door; the label map paints each part a flat
class color, the photo the same layout with shading, texture and noise (seeded).
"""

import argparse
import os

import numpy as np
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("--root", required=True)
p.add_argument("--train", type=int, default=12)
p.add_argument("--val", type=int, default=10)
p.add_argument("--size", type=int, default=256)
a = p.parse_args()
rng = np.random.default_rng(0)
S = a.size
LABEL = {"wall": (0, 0, 255), "window": (0, 170, 255), "door": (255, 85, 0), "sky": (0, 0, 170)}


def facade():
    label = np.zeros((S, S, 3), np.uint8)
    photo = np.zeros((S, S, 3), np.float32)
    top = int(rng.integers(S // 10, S // 4))
    label[:top] = LABEL["sky"]
    photo[:top] = (150, 190, 235)
    label[top:] = LABEL["wall"]
    wall = rng.uniform(120, 200, 3)
    photo[top:] = wall + rng.normal(0, 8, (S - top, S, 3))
    rows, cols = int(rng.integers(2, 5)), int(rng.integers(3, 6))
    h, w = (S - top) // (rows + 1), S // (cols + 1)
    for r in range(rows):
        for c in range(cols):
            y, x = top + (r + 1) * h - h // 3, (c + 1) * w - w // 4
            label[y : y + h // 2, x : x + w // 2] = LABEL["window"]
            photo[y : y + h // 2, x : x + w // 2] = rng.uniform(20, 70) + rng.normal(
                0, 5, (1, 1, 3)
            )
    dx = int(rng.integers(S // 3, 2 * S // 3))
    label[S - h :, dx : dx + w // 2] = LABEL["door"]
    photo[S - h :, dx : dx + w // 2] = (90, 60, 40)
    photo *= np.linspace(1.1, 0.8, S)[None, :, None]  # light from the left
    return np.clip(photo, 0, 255).astype(np.uint8), label


for split, n in (("train", a.train), ("val", a.val)):
    os.makedirs(os.path.join(a.root, split), exist_ok=True)
    for i in range(n):
        photo, label = facade()
        Image.fromarray(np.concatenate([photo, label], axis=1)).save(
            os.path.join(a.root, split, f"{i + 1}.jpg"), quality=95
        )
