"""A tiny COCO-format detection set for torchvision's references/detection (nothing is
downloaded): `<out>/train2017/`, `<out>/val2017/` JPEGs and
`<out>/annotations/instances_{train,val}2017.json` (images, annotations with bbox, area,
iscrowd, a polygon segmentation, category_id; categories), as `get_coco` reads them.

Each image is a noisy gray background with one to three filled rectangles; a rectangle's color
says its category (red 1, green 2, blue 3), so the boxes and classes are learnable.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("--out", default="coco")
p.add_argument("--train", type=int, default=12)
p.add_argument("--val", type=int, default=2)
p.add_argument("--size", type=int, default=128)
a = p.parse_args()

rng = np.random.default_rng(0)
colors = {1: (220, 40, 40), 2: (40, 200, 40), 3: (40, 60, 220)}
categories = [
    {"id": c, "name": n, "supercategory": "shape"}
    for c, n in ((1, "red"), (2, "green"), (3, "blue"))
]
os.makedirs(os.path.join(a.out, "annotations"), exist_ok=True)
ann_id = 1
for split, n, first_id in (("train", a.train, 1), ("val", a.val, 1000)):
    folder = os.path.join(a.out, f"{split}2017")
    os.makedirs(folder, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        image_id = first_id + i
        img = rng.normal(128, 12, size=(a.size, a.size, 3))
        for _ in range(rng.integers(1, 4)):
            w, h = rng.integers(a.size // 6, a.size // 2, size=2)
            x, y = rng.integers(0, a.size - w), rng.integers(0, a.size - h)
            cat = int(rng.integers(1, 4))
            img[y : y + h, x : x + w] = colors[cat]
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat,
                    "iscrowd": 0,
                    "bbox": [int(x), int(y), int(w), int(h)],
                    "area": float(w * h),
                    "segmentation": [[float(v) for v in poly]],
                }
            )
            ann_id += 1
        name = f"{image_id:012d}.jpg"
        Image.fromarray(img.clip(0, 255).astype("uint8")).save(os.path.join(folder, name))
        images.append({"id": image_id, "file_name": name, "width": a.size, "height": a.size})
    with open(os.path.join(a.out, "annotations", f"instances_{split}2017.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
print("wrote", a.out)
