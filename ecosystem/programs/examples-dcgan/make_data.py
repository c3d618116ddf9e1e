"""Synthetic image folder for pytorch/examples dcgan (--dataset folder --dataroot <root>).

torchvision.datasets.ImageFolder reads <root>/<class>/*.png. Each 64x64 RGB image is a soft
disc of a random colour at a random place on a darker, smoothly shaded background, so the
images share structure a GAN can learn.
"""

import argparse
import os

import numpy as np
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="data/shapes")
parser.add_argument("-n", type=int, default=512)
parser.add_argument("--size", type=int, default=64)
args = parser.parse_args()

rng = np.random.default_rng(0)
folder = os.path.join(args.root, "discs")
os.makedirs(folder, exist_ok=True)
s = args.size
ys, xs = np.mgrid[0:s, 0:s] / s
for i in range(args.n):
    bg = rng.uniform(0.05, 0.3, 3)[:, None, None] * (0.6 + 0.4 * ys)[None]
    cy, cx = rng.uniform(0.25, 0.75, 2)
    r = rng.uniform(0.12, 0.25)
    disc = 1 / (1 + np.exp((np.hypot(ys - cy, xs - cx) - r) * 40))
    colour = rng.uniform(0.4, 1.0, 3)[:, None, None]
    img = bg * (1 - disc) + colour * disc + rng.normal(0, 0.02, (3, s, s))
    img = (np.clip(img, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(folder, f"{i:04d}.png"))
