"""Synthetic Synth90k (MJSynth) in the layout crnn-pytorch's Synth90kDataset reads.

`<root>/lexicon.txt` (one word a line), `<root>/annotation_{train,val}.txt` (`<image path> <lexicon
index>` a line, paths relative to the root) and the word images (gray text on a noisy background,
drawn with PIL's default font, any size: the dataset resizes to 100x32). Words of 3-8 characters
from the program's alphabet (digits and lowercase letters).

The program has no command line: its settings are the dicts of `src/config.py`, which its README
says to edit. Rather than editing that file (the program's code is materialized unchanged), this
writes a `sitecustomize.py` (on `PYTHONPATH=.`) that sets the same dict entries before `train.py`
imports them: 3 epochs of 12 batches of 8, validation every 12 steps, loader workers 0.
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="data/mnt/ramdisk/max/90kDICT32px")
parser.add_argument("--train", type=int, default=96)
parser.add_argument("--val", type=int, default=32)
args = parser.parse_args()

CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"
rng = np.random.default_rng(0)
font = ImageFont.load_default()
words = ["".join(rng.choice(list(CHARS), rng.integers(3, 9))) for _ in range(200)]
os.makedirs(os.path.join(args.root, "imgs"), exist_ok=True)
with open(os.path.join(args.root, "lexicon.txt"), "w") as f:
    f.write("\n".join(words) + "\n")


def image(word):
    img = Image.new("L", (8 * len(word) + 8, 16), int(rng.integers(150, 256)))
    ImageDraw.Draw(img).text((4, 2), word, fill=int(rng.integers(0, 90)), font=font)
    arr = np.asarray(img, np.float64) + rng.normal(0, 8, (img.height, img.width))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


for split, n in (("train", args.train), ("val", args.val)):
    lines = []
    for i in range(n):
        index = int(rng.integers(len(words)))
        rel = f"imgs/{split}_{i}_{words[index]}.jpg"
        image(words[index]).save(os.path.join(args.root, rel))
        lines.append(f"{rel} {index}")
    with open(os.path.join(args.root, f"annotation_{split}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")

os.makedirs("checkpoints", exist_ok=True)
with open("sitecustomize.py", "w") as f:
    f.write(
        "# Written by the ecosystem's make_data.py: the program's settings are the dicts of\n"
        "# config.py (no command line); set here the entries its README says to edit.\n"
        "try:\n"
        "    import config\n"
        "except ImportError:\n"
        "    config = None\n"
        "if config is not None and hasattr(config, 'train_config'):\n"
        "    config.train_config.update(\n"
        "        epochs=3, train_batch_size=8, eval_batch_size=32, cpu_workers=0,\n"
        "        show_interval=4, valid_interval=12, save_interval=36,\n"
        "    )\n"
    )
