"""Synthetic ImageFolder data (train/ and val/, one folder per class) for pytorch/examples imagenet/main.py and timm's train.py
(--data-dir data --val-split val).

Each class is a distinct colour + stripe orientation so a small CNN can learn it in ~100 steps.
Written as small PNGs; the program's own RandomResizedCrop/Resize bring them to 224.
"""

import argparse
import os

import numpy as np
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("--out", default="data")
p.add_argument("--classes", type=int, default=4)
p.add_argument("--train-per-class", type=int, default=100)
p.add_argument("--val-per-class", type=int, default=10)
p.add_argument("--size", type=int, default=32)
a = p.parse_args()

rng = np.random.default_rng(0)
palette = np.array(
    [
        [220, 40, 40],
        [40, 200, 60],
        [50, 70, 220],
        [230, 200, 40],
        [200, 50, 200],
        [40, 200, 210],
        [120, 120, 120],
        [250, 140, 30],
    ],
    np.float32,
)
yy, xx = np.mgrid[0 : a.size, 0 : a.size]


def image(c):
    base = palette[c % len(palette)]
    period = 4 + 2 * (c % 3)
    stripes = ((xx if c % 2 == 0 else yy) // period) % 2
    img = base[None, None, :] * (0.6 + 0.4 * stripes[..., None])
    img = img + rng.normal(0, 25, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


for split, n in (("train", a.train_per_class), ("val", a.val_per_class)):
    for c in range(a.classes):
        d = os.path.join(a.out, split, f"class{c:02d}")
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            image(c).save(os.path.join(d, f"{i:04d}.png"))
print("wrote", a.out)
