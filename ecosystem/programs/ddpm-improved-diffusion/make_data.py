"""Synthetic 32x32 RGB PNG images in a flat folder: improved-diffusion's load_data lists *.png recursively."""

import argparse
import os

import numpy as np
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--n", type=int, default=256)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:32, 0:32] / 31.0
for i in range(a.n):
    c = i % 4  # class in the file name prefix, as load_data(class_cond=True) would read it
    cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    disk = (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r).astype(np.float32)
    bg = np.stack([xx, yy, 1 - xx], -1) * 0.5
    color = np.eye(3)[c % 3] * 0.8 + 0.1
    img = bg * (1 - disk[..., None]) + color * disk[..., None] + rng.normal(0, 0.02, (32, 32, 3))
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(
        os.path.join(a.out, f"c{c}_{i:04d}.png")
    )
