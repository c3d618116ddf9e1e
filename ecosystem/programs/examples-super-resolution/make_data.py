"""Synthetic BSDS300 for pytorch/examples super_resolution: dataset/BSDS300/images/{train,test}/*.jpg.

data.py skips its download when dataset/BSDS300/images exists and reads every .jpg of the
train and test folders, center-cropped to 255 px (upscale factor 3). Each image is smooth
shading plus a few soft ellipses and a fine stripe texture, so there is high-frequency detail
for the network to recover from the 85 px input.
"""

import argparse
import os

import numpy as np
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="dataset/BSDS300/images")
parser.add_argument("--train", type=int, default=64)
parser.add_argument("--test", type=int, default=16)
parser.add_argument("--size", type=int, default=264)
args = parser.parse_args()

rng = np.random.default_rng(0)
s = args.size
ys, xs = np.mgrid[0:s, 0:s] / s


def image():
    img = rng.uniform(0.1, 0.5, 3)[:, None, None] * (0.5 + 0.5 * ys)[None]
    for _ in range(rng.integers(3, 7)):
        cy, cx, ry, rx = rng.uniform(0.1, 0.9, 2).tolist() + rng.uniform(0.05, 0.3, 2).tolist()
        inside = 1 / (1 + np.exp((((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 - 1) * 30))
        img = img * (1 - inside) + rng.uniform(0, 1, 3)[:, None, None] * inside
    angle, freq = rng.uniform(0, np.pi), rng.uniform(20, 60)
    img += 0.08 * np.sin(freq * (np.cos(angle) * xs + np.sin(angle) * ys) * 2 * np.pi)[None]
    return (np.clip(img, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)


for split, n in (("train", args.train), ("test", args.test)):
    folder = os.path.join(args.root, split)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.fromarray(image()).save(os.path.join(folder, f"{i:04d}.jpg"), quality=95)
