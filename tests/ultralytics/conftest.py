"""Ultralytics tests: their own venv (`make test-ultralytics`), tiny datasets written here, and
no network at all.

Ultralytics needs torchvision with working compiled ops, which the CPU-only torch of the main
`.venv` has no match for; in that venv these tests are skipped (each module importorskips
ultralytics with the reason). Nothing may be downloaded: models are built from
`yolo11n.yaml` (no .pt weights), datasets are drawn here, `plots=False` (Ultralytics would
fetch a font), `amp` is off on CPU (its AMP check would fetch weights), and every test runs with
the socket layer raising (see `no_network`).
"""

from __future__ import annotations

import os
import runpy
import shutil
import socket
import tempfile
import textwrap
from pathlib import Path

import pytest

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

# Two sizes. At imgsz 64 only the stride-8 level of YOLO11n's head gets objects assigned: the
# stride-32 box branch receives no gradient at all (traindoctor reports it, TD104), so the
# runs that must be silent use 384 px, where objects of every size train every level.
SMALL, LARGE = 64, 384


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection or name lookup fails the test: nothing may be downloaded at run time."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        import traceback

        traceback.print_stack(limit=30)
        attempts.append(repr(args[1:] if args and isinstance(args[0], socket.socket) else args))
        raise OSError("network access in a test (blocked by tests/ultralytics/conftest.py)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == [], f"the test tried to reach the network: {attempts}"


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


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("small"), SMALL, n_train=16, n_val=8)


@pytest.fixture(scope="session")
def large_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("large"), LARGE, n_train=12, n_val=8)


def train_args(data: Path, out: Path, imgsz: int, **overrides) -> dict:
    """`model.train(**...)` for a few CPU steps: batch 4 with nbs=4 (one batch per optimizer
    step), no plots (a font download), amp off (its check downloads weights), Ultralytics'
    other defaults (optimizer auto, warmup, EMA, validation every epoch, final best.pt check)."""
    args = {
        "data": str(data),
        "imgsz": imgsz,
        "epochs": 3,
        "batch": 4,
        "nbs": 4,
        "workers": 0,
        "device": "cpu",
        "plots": False,
        "amp": False,
        "seed": 0,
        "deterministic": True,
        "project": str(out / "yolo"),
        "name": "train",
        "exist_ok": True,
        "verbose": False,
    }
    args.update(overrides)
    return args


def write_script(tmp_path: Path, source: str) -> Path:
    """The user's `train.py`, in the test's directory: a file outside this package, as a user
    script is (the lines findings point to are its lines)."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(source).lstrip())
    return script


def run_script(tmp_path: Path, source: str, **names) -> dict:
    """Run `source` as the user's `train.py` (`python train.py`), with `names` (ARGS, OUT, ...)
    as globals; returns its globals."""
    script = write_script(tmp_path, source)
    return runpy.run_path(str(script), init_globals=names, run_name="__main__")


def line_of(source: str, marker: str) -> int:
    """The line of `train.py` (as written by `write_script`) that holds `marker`."""
    lines = textwrap.dedent(source).lstrip().splitlines()
    found = [i for i, line in enumerate(lines, 1) if marker in line]
    assert len(found) == 1, (marker, found)
    return found[0]
