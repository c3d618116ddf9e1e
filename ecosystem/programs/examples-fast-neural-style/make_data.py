"""Local data and VGG-16 weights for pytorch/examples' fast_neural_style (nothing is downloaded).

- `<out>/images/*.jpg`: content images for `datasets.ImageFolder(--dataset)` (one class folder),
  smooth random color fields with a few rectangles, so the content loss has structure to keep;
- `<out>/style.jpg`: a small striped style image (`--style-image`; the repository's own style
  images are large, and `--style-size` would call `Image.ANTIALIAS`, which Pillow 10 removed);
- the VGG-16 weights file that `models.vgg16(weights=VGG16_Weights.IMAGENET1K_V1)` looks for in
  torch hub's cache (`$HOME/.cache/torch/hub/checkpoints/vgg16-397923af.pth`; torchvision checks
  the hash only when it downloads): a randomly initialized VGG-16 (seed 0) stands in for the
  ImageNet weights, which cannot be downloaded here. The loss network stays frozen, as upstream.
"""

import argparse
import os

import numpy as np
import torch
from PIL import Image
from torchvision import models

p = argparse.ArgumentParser()
p.add_argument("--out", default="data")
p.add_argument("--images", type=int, default=32)
p.add_argument("--size", type=int, default=64)
a = p.parse_args()

rng = np.random.default_rng(0)
folder = os.path.join(a.out, "images")
os.makedirs(folder, exist_ok=True)
yy, xx = np.mgrid[0 : a.size, 0 : a.size] / a.size
for i in range(a.images):
    phase = rng.uniform(0, 2 * np.pi, size=3)
    img = np.stack([np.sin(4 * xx + 3 * yy * (c + 1) + phase[c]) for c in range(3)], -1)
    img = (img + 1) * 100
    for _ in range(3):
        x0, y0 = rng.integers(0, a.size - 16, size=2)
        img[y0 : y0 + 16, x0 : x0 + 16] = rng.uniform(0, 255, size=3)
    Image.fromarray(img.clip(0, 255).astype("uint8")).save(os.path.join(folder, f"{i:04d}.jpg"))

stripes = ((np.sin(xx * 40 + yy * 20) > 0)[..., None] * np.array([230, 60, 20])).astype("uint8")
Image.fromarray(stripes + 20).save(os.path.join(a.out, "style.jpg"))

hub = os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub", "checkpoints")
os.makedirs(hub, exist_ok=True)
torch.manual_seed(0)
torch.save(models.vgg16().state_dict(), os.path.join(hub, "vgg16-397923af.pth"))
print("wrote", a.out, hub)
