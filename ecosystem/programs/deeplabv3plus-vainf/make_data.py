"""Synthetic PASCAL VOC 2012 segmentation set for VainF/DeepLabV3Plus-Pytorch, and its
"pretrained" backbone.

<root>/VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png (palette PNG, class ids
0-20, 255 on object outlines as in VOC), ImageSets/Segmentation/{train,val}.txt}. Each image
holds one to three discs or squares on a textured background; an object's class (1-6) fixes
its colour family, so the classes are learnable from the pixels.

`deeplabv3plus_mobilenet` loads an ImageNet MobileNetV2 through torch.hub
(`mobilenet_v2-b0353104.pth`); offline, a randomly initialized one of the repository's own
MobileNetV2 (seed 0) is written under that name in $HOME's hub cache (torch.hub checks no hash
unless asked). `main.py` imports visdom at the top (used only with --enable_vis): a stub
`visdom.py` (on PYTHONPATH=.) stands for it; the visdom package does not build here.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="data")
parser.add_argument("--train", type=int, default=32)
parser.add_argument("--val", type=int, default=4)
parser.add_argument("--size", type=int, default=96)
args = parser.parse_args()

rng = np.random.default_rng(0)
voc = os.path.join(args.root, "VOCdevkit", "VOC2012")
for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
    os.makedirs(os.path.join(voc, sub), exist_ok=True)
COLOURS = {
    1: (220, 40, 40),
    2: (40, 200, 60),
    3: (50, 70, 230),
    4: (230, 210, 40),
    5: (200, 60, 210),
    6: (40, 210, 220),
}
palette = np.zeros((256, 3), np.uint8)
for c, col in COLOURS.items():
    palette[c] = col
palette[255] = (224, 224, 192)
s = args.size
ys, xs = np.mgrid[0:s, 0:s]
names = {"train": [], "val": []}
for i in range(args.train + args.val):
    split = "train" if i < args.train else "val"
    img = rng.uniform(60, 140, 3)[None, None] + rng.normal(0, 12, (s, s, 3))
    lab = np.zeros((s, s), np.uint8)
    for _ in range(rng.integers(1, 4)):
        c = int(rng.integers(1, 7))
        cy, cx = rng.uniform(0.2, 0.8, 2) * s
        r = rng.uniform(0.1, 0.22) * s
        if rng.random() < 0.5:
            d = np.hypot(ys - cy, xs - cx)
        else:
            d = np.maximum(abs(ys - cy), abs(xs - cx))
        inside, edge = d < r - 1.5, (d >= r - 1.5) & (d < r + 1.5)
        img[inside] = np.array(COLOURS[c]) + rng.normal(0, 15, (inside.sum(), 3))
        lab[inside] = c
        lab[edge] = 255
    name = f"2012_{i:06d}"
    names[split].append(name)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
        os.path.join(voc, "JPEGImages", name + ".jpg"), quality=95
    )
    mask = Image.fromarray(lab, mode="P")
    mask.putpalette(palette.reshape(-1).tolist())
    mask.save(os.path.join(voc, "SegmentationClass", name + ".png"))
for split, ns in names.items():
    with open(os.path.join(voc, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
        f.write("\n".join(ns) + "\n")

with open("visdom.py", "w") as f:
    f.write(
        "class Visdom:\n    def __init__(self, *a, **k):\n"
        '        raise RuntimeError("visdom is not installed (stub)")\n'
    )

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402
from network.backbone.mobilenetv2 import mobilenet_v2  # noqa: E402

torch.manual_seed(0)
hub = os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub", "checkpoints")
os.makedirs(hub, exist_ok=True)
torch.save(
    mobilenet_v2(pretrained=False).state_dict(), os.path.join(hub, "mobilenet_v2-b0353104.pth")
)
