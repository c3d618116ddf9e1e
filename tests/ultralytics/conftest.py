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

import runpy
import socket
import textwrap
from pathlib import Path

import pytest

from ._offline import write_dataset  # first: it sets the offline environment

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
