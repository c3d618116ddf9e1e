"""Offline Ultralytics set-up and a drawn YOLO dataset, shared by tests/ultralytics and
bench/ultralytics_overhead.py. Import it before ultralytics: it sets the environment
Ultralytics reads at import time."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Before ultralytics is imported anywhere: it reads these at import time.
os.environ.setdefault("YOLO_OFFLINE", "1")  # no online checks, hub or telemetry
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("TRAINDOCTOR_PLOTS", "0")


def _font() -> None:
    """Every dataset check calls `check_font("Arial.ttf")`, which asks github for the font
    (even offline) unless it is in the config dir: put matplotlib's DejaVu Sans there."""
    import matplotlib

    target = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics" / "Arial.ttf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        shutil.copyfile(font, target)


_font()


def write_dataset(root: Path, size: int, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Images of `size` px with filled rectangles (class 0 red, class 1 blue) at three scales
    (about 1/8-1/4, 1/3-1/2 and 0.7-1 of the image), YOLO label files and a data yaml."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(230, 40, 40), (40, 80, 230)]
    ranges = [(size // 8, size // 4), (size // 3, size // 2), (int(size * 0.7), size - 2)]
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((size, size, 3), 200, np.uint8)
            lines = []
            for k in range(int(rng.integers(1, 4))):
                c = int(rng.integers(0, 2))
                w, h = (int(v) for v in rng.integers(*ranges[k % 3], 2))
                x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
                img[y0 : y0 + h, x0 : x0 + w] = colours[c]
                xc, yc = (x0 + w / 2) / size, (y0 + h / 2) / size
                lines.append(f"{c} {xc:.6f} {yc:.6f} {w / size:.6f} {h / size:.6f}")
            Image.fromarray(img).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: blue\n"
    )
    return data
