"""Synthetic CelebA-style image folder for eriklindernoren/PyTorch-GAN's `srgan.py`.

`ImageDataset` globs `../../data/<dataset_name>/*.*` (from `implementations/srgan`), resizes
each image to the high-resolution shape and to a quarter of it (bicubic) and normalizes both
with ImageNet's mean and std. Written here: `--images` RGB JPEGs of 96 px, each a soft
face-like layout (a shaded background, an ellipse of skin tone, two darker eyes and a mouth
in jittered places and colours), with fine stripes on the background, so the 4x upsampling
has detail to recover.

And the VGG-19 weights that `vgg19(pretrained=True)` loads from torch hub's cache
(`$HOME/.cache/torch/hub/checkpoints/vgg19-dcbb9e9d.pth`; torchvision checks the hash only
when it downloads): a randomly initialized VGG-19 (seed 0) stands in for the ImageNet
weights, which cannot be downloaded here. The feature extractor (its first 18 layers) is the
content loss's fixed feature map, as upstream.
"""

import argparse
import os

import numpy as np
import torch
from PIL import Image
from torchvision import models

p = argparse.ArgumentParser()
p.add_argument("--out", default="../../data/img_align_celeba")
p.add_argument("--images", type=int, default=96)
p.add_argument("--size", type=int, default=96)
a = p.parse_args()

rng = np.random.default_rng(0)
s = a.size
yy, xx = np.mgrid[0:s, 0:s] / s
os.makedirs(a.out, exist_ok=True)
for i in range(a.images):
    bg = rng.uniform(0.2, 0.8, 3)
    img = bg[None, None] * (0.8 + 0.2 * np.sin(xx * rng.uniform(30, 60)))[..., None]
    cy, cx = rng.uniform(0.45, 0.55, 2)
    ry, rx = rng.uniform(0.3, 0.38), rng.uniform(0.22, 0.3)
    face = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    skin = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.7, 1.1)
    img[face] = skin
    for ex in (cx - rx * 0.4, cx + rx * 0.4):
        eye = ((yy - (cy - ry * 0.25)) / 0.04) ** 2 + ((xx - ex) / 0.05) ** 2 < 1
        img[eye] = rng.uniform(0.0, 0.3, 3)
    mouth = (abs(yy - (cy + ry * 0.45)) < 0.02) & (abs(xx - cx) < rx * 0.45)
    img[mouth] = np.array([0.6, 0.15, 0.15])
    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(os.path.join(a.out, f"{i:06d}.jpg"))

hub = os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub", "checkpoints")
os.makedirs(hub, exist_ok=True)
torch.manual_seed(0)
torch.save(models.vgg19().state_dict(), os.path.join(hub, "vgg19-dcbb9e9d.pth"))
