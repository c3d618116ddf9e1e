"""Synthetic Pascal VOC in YOLO text format for MingLongSu/YOLOv1-Implementation.

implementation/dataset.py reads a header-less CSV of (image file, label file) pairs
(--metaset_path), the images from --imgs_path with matplotlib's imread (JPEG: uint8 0-255,
which it divides by 255) and each label file as lines "class cx cy w h", all four normalized
to the image. Each image holds 1-2 objects on a shaded background, and each of three VOC
classes has its own look (6 'car' a wide red rectangle, 4 'bottle' a tall green one, 16
'sheep' a pale disc), so boxes and classes can be learned.
"""

import argparse
import os

import numpy as np
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="data")
parser.add_argument("-n", type=int, default=32)
parser.add_argument("--size", type=int, default=96)
args = parser.parse_args()

rng = np.random.default_rng(0)
imgs, lbls = os.path.join(args.root, "images"), os.path.join(args.root, "labels")
os.makedirs(imgs, exist_ok=True)
os.makedirs(lbls, exist_ok=True)
CLASSES = {6: (0.9, 0.2, 0.2), 4: (0.2, 0.8, 0.3), 16: (0.95, 0.95, 0.9)}
s = args.size
ys, xs = np.mgrid[0:s, 0:s]
rows = []
for i in range(args.n):
    img = rng.uniform(0.05, 0.35, 3)[:, None, None] * (0.6 + 0.4 * ys / s)[None]
    lines = []
    for _ in range(rng.integers(1, 3)):
        cls = list(CLASSES)[rng.integers(len(CLASSES))]
        w = rng.uniform(0.2, 0.45) * s
        h = min({6: w * 0.6, 4: w * 1.8, 16: w}[cls], s - 2)
        x1, y1 = rng.uniform(0, s - w), rng.uniform(0, s - h)
        colour = np.array(CLASSES[cls])[:, None, None] * rng.uniform(0.8, 1.0)
        if cls == 16:
            inside = np.hypot(ys - (y1 + h / 2), xs - (x1 + w / 2)) <= w / 2
        else:
            inside = (ys >= y1) & (ys < y1 + h) & (xs >= x1) & (xs < x1 + w)
        img = np.where(inside[None], colour, img)
        lines.append(f"{cls} {(x1 + w / 2) / s:.6f} {(y1 + h / 2) / s:.6f} {w / s:.6f} {h / s:.6f}")
    img = img + rng.normal(0, 0.02, img.shape)
    img = (np.clip(img, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
    name = f"{i:06d}"
    Image.fromarray(img).save(os.path.join(imgs, name + ".jpg"), quality=95)
    with open(os.path.join(lbls, name + ".txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    rows.append(f"{name}.jpg,{name}.txt")
with open(os.path.join(args.root, "train.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")
