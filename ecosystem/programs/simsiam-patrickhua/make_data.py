"""ImageNet-layout shape images and a small run config for PatrickHua/SimSiam.

torchvision's ImageNet(root, split) reads <root>/meta.bin (wnid -> class names, and the val
wnids; the devkit archive is parsed only when it is missing) and the ImageFolder trees
<root>/train/<wnid>/ and <root>/val/<wnid>/. Four shape families (disc, square, horizontal and
vertical bars) in random colours, places and sizes on shaded backgrounds, 32 px: two crops of
one image share content that crops of other images do not.

The config is the repository's configs/simsiam_cifar.yaml shrunk to the machine: the same
model, optimizer, schedule shape and loss, `dataset: imagenet` at 32 px, batch 16, 3 epochs
(1 of warmup), seed 0, no kNN monitor (it calls .cuda()) and no linear evaluation.

The repository passes `download=False` to torchvision's ImageNet, a keyword later torchvision
releases removed (TypeError at the first dataset): sitecustomize.py, on the program's
PYTHONPATH, puts the no-op keyword back when torchvision.datasets.imagenet is first imported.
The program's own code is unchanged.
"""

import argparse
import os

import numpy as np
import torch
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="data/shapes-imagenet")
parser.add_argument("--config", default="simsiam_shapes.yaml")
parser.add_argument("--train", type=int, default=96)
parser.add_argument("--val", type=int, default=32)
parser.add_argument("--size", type=int, default=32)
args = parser.parse_args()

rng = np.random.default_rng(0)
s = args.size
ys, xs = np.mgrid[0:s, 0:s] / s
KINDS = {"n00000001": "disc", "n00000002": "square", "n00000003": "hbars", "n00000004": "vbars"}


def image(kind: str) -> np.ndarray:
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
    return (np.clip(img, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)


for split, n in (("train", args.train), ("val", args.val)):
    for i in range(n):
        wnid = list(KINDS)[i % len(KINDS)]
        folder = os.path.join(args.root, split, wnid)
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image(KINDS[wnid])).save(os.path.join(folder, f"{split}_{i:04d}.png"))
val_wnids = [list(KINDS)[i % len(KINDS)] for i in range(args.val)]
torch.save(({w: (c,) for w, c in KINDS.items()}, val_wnids), os.path.join(args.root, "meta.bin"))

CONFIG = """name: simsiam-shapes-resnet18_cifar_variant1
dataset:
  name: imagenet
  image_size: 32
  num_workers: 0

model:
  name: simsiam
  backbone: resnet18_cifar_variant1
  proj_layers: 2

train:
  optimizer:
    name: sgd
    weight_decay: 0.0005
    momentum: 0.9
  warmup_epochs: 1
  warmup_lr: 0
  base_lr: 0.03
  final_lr: 0
  num_epochs: 3
  stop_at_epoch: 3
  batch_size: 16
  knn_monitor: False
  knn_interval: 1
  knn_k: 200
eval: False

logger:
  tensorboard: False
  matplotlib: False

seed: 0
"""
with open(args.config, "w") as f:
    f.write(CONFIG)

SHIM = """# Written by the ecosystem's make_data.py: torchvision removed ImageNet's `download`
# keyword, which PatrickHua/SimSiam passes (as False). Put back lazily, when
# torchvision.datasets.imagenet is first imported.
import importlib.abc
import sys


class _Download(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision.datasets.imagenet":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            init = module.ImageNet.__init__

            def __init__(self, root, split="train", download=False, **kwargs):
                if download:
                    raise RuntimeError("ImageNet cannot be downloaded")
                init(self, root, split=split, **kwargs)

            module.ImageNet.__init__ = __init__

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Download())
"""
with open("sitecustomize.py", "w") as f:
    f.write(SHIM)
