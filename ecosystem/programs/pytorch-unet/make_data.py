"""Synthetic Carvana-style data for milesial/Pytorch-UNet: data/imgs/<id>.jpg, data/masks/<id>_mask.gif.

train.py tries CarvanaDataset (mask = <id>_mask.*) first; the masks are one-channel GIFs with
values 0 (background) and 1 (object), as Carvana's. Each RGB image is a soft shaded blob (a
few overlapping ellipses, the "car") of a random colour on a textured background; its mask
is the blob.
"""

import argparse
import os

import numpy as np
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="data")
parser.add_argument("-n", type=int, default=24)
parser.add_argument("--size", type=int, default=64)
args = parser.parse_args()

rng = np.random.default_rng(0)
s = args.size
ys, xs = np.mgrid[0:s, 0:s] / s
os.makedirs(os.path.join(args.root, "imgs"), exist_ok=True)
os.makedirs(os.path.join(args.root, "masks"), exist_ok=True)
for i in range(args.n):
    inside = np.zeros((s, s), bool)
    cy, cx = rng.uniform(0.35, 0.65, 2)
    for _ in range(3):
        oy, ox = rng.normal(0, 0.08, 2)
        ry, rx = rng.uniform(0.08, 0.2), rng.uniform(0.15, 0.3)
        inside |= ((ys - cy - oy) / ry) ** 2 + ((xs - cx - ox) / rx) ** 2 < 1
    bg = rng.uniform(0.3, 0.7, 3)[:, None, None] + 0.1 * np.sin(xs * rng.uniform(5, 20))[None]
    car = rng.uniform(0, 1, 3)[:, None, None] * (0.7 + 0.3 * ys)[None]
    img = np.where(inside[None], car, bg) + rng.normal(0, 0.03, (3, s, s))
    img = (np.clip(img, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(args.root, "imgs", f"car{i:03d}.jpg"), quality=95)
    mask = Image.fromarray(inside.astype(np.uint8), mode="L")
    mask.save(os.path.join(args.root, "masks", f"car{i:03d}_mask.gif"))
