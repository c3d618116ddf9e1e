"""Synthetic image folder for HobbitLong/SupContrast (--dataset path --data_folder <root>).

torchvision.datasets.ImageFolder reads <root>/<class>/*.png; SimCLR ignores the class. Each
RGB image is one of four shape families (disc, square, horizontal bars, vertical bars) in a
random colour, place and size on a shaded background, so two random crops of one image share
content that crops of other images do not.
"""

import argparse
import os

import numpy as np
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="data/shapes")
parser.add_argument("-n", type=int, default=128)
parser.add_argument("--size", type=int, default=32)
args = parser.parse_args()

rng = np.random.default_rng(0)
s = args.size
ys, xs = np.mgrid[0:s, 0:s] / s
KINDS = ("disc", "square", "hbars", "vbars")
for kind in KINDS:
    os.makedirs(os.path.join(args.root, kind), exist_ok=True)
for i in range(args.n):
    kind = KINDS[i % len(KINDS)]
    img = rng.uniform(0.05, 0.4, 3)[:, None, None] * (0.6 + 0.4 * ys)[None]
    cy, cx = rng.uniform(0.3, 0.7, 2)
    r = rng.uniform(0.15, 0.3)
    if kind == "disc":
        mask = np.hypot(ys - cy, xs - cx) < r
    elif kind == "square":
        mask = (abs(ys - cy) < r) & (abs(xs - cx) < r)
    elif kind == "hbars":
        mask = np.sin(ys * rng.uniform(12, 24)) > 0.3
    else:
        mask = np.sin(xs * rng.uniform(12, 24)) > 0.3
    colour = rng.uniform(0.4, 1.0, 3)[:, None, None]
    img = np.where(mask[None], colour, img) + rng.normal(0, 0.02, (3, s, s))
    img = (np.clip(img, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(args.root, kind, f"{i:04d}.png"))
