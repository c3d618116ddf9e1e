"""Find the user's line of code in the current stack, hiding torch, traindoctor and the stdlib."""

from __future__ import annotations

import functools
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any

import torch

PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_SCENARIOS_DIR = os.path.join(PKG_DIR, "scenarios")
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"])
# Framework internals are not the user's code either (Lightning, HF, accelerate, Ultralytics),
# wherever they are installed (an editable checkout too). Matched by the packages' own
# directories, not by a folder name: a user's `ultralytics/train.py` is the user's code.
_FRAMEWORKS = (
    "lightning",
    "pytorch_lightning",
    "transformers",
    "accelerate",
    "ultralytics",
    "peft",
)


@functools.cache
def _framework_dirs() -> tuple[str, ...]:
    import importlib.util

    dirs = []
    for name in _FRAMEWORKS:
        try:
            spec = importlib.util.find_spec(name)  # a top-level package: not imported
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(os.path.join(os.path.abspath(location), ""))
    return tuple(dirs)


_cache: dict[str, bool] = {}


def is_user_file(filename: str) -> bool:
    hit = _cache.get(filename)
    if hit is not None:
        return hit
    path = os.path.abspath(filename)
    if filename.startswith("<") and filename not in ("<stdin>", "<string>"):
        user = False
    elif path.startswith(_SCENARIOS_DIR):
        # Bundled scenarios stand in for user scripts; their `_base.py` helpers (`log`,
        # `validating`) and the `demo.py` runner stand in for traindoctor's API, so the user
        # line is their caller's.
        user = os.path.basename(path) not in ("_base.py", "demo.py")
    elif f"{os.sep}site-packages{os.sep}" in path or f"{os.sep}dist-packages{os.sep}" in path:
        # Installed libraries (bitsandbytes, timm, ...): the user's line is their caller's.
        user = False
    elif (
        path.startswith((PKG_DIR, TORCH_DIR))
        or path.startswith(_STDLIB_DIR)
        and "site-packages" not in path
    ):
        user = False
    else:
        user = not path.startswith(_framework_dirs())
    _cache[filename] = user
    return user


def user_frame(skip: int = 1) -> tuple[str, int, str] | None:
    """(file, line, code) of the innermost frame that belongs to the user, or None."""
    found = _user_line(skip + 1)
    return None if found is None else (*found, line_text(*found))


def _user_line(skip: int) -> tuple[str, int] | None:
    # is_user_file's cache read inline: one Python call less per frame walked (the forward
    # probe asks once per module, ~6 frames each: 30,000 calls on a model of 5,000 layers).
    frame = sys._getframe(skip)
    cache = _cache
    while frame is not None:
        filename = frame.f_code.co_filename
        user = cache.get(filename)
        if user is None:
            user = is_user_file(filename)
        if user:
            return filename, frame.f_lineno
        frame = frame.f_back
    return None


def call_site(max_depth: int = 24) -> tuple[str, int] | None:
    """(file, line) of the innermost user frame: cheap enough for every backward (µs)."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        if is_user_file(frame.f_code.co_filename):
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back
    return None


def user_source(skip: int = 1) -> str | None:
    """`path:line` of the user's frame, relative to the working directory when inside it."""
    found = _user_line(skip + 1)  # the line's text is not read: only its place is named
    if found is None:
        return None
    return f"{relpath(found[0])}:{found[1]}"


def user_source_with_code(skip: int = 1) -> dict[str, str] | None:
    found = user_frame(skip + 1)
    if found is None:
        return None
    return {"source": f"{relpath(found[0])}:{found[1]}", "code": found[2]}


# Paths are shown relative to the directory the run started in, even if the script chdirs.
_BASE_DIR = Path.cwd().resolve()


def relpath(filename: str) -> str:
    if "ipykernel_" not in filename:  # _notebook_cell's own test, without its call
        return _relpath(filename)
    cell = _notebook_cell(filename)
    return cell if cell is not None else _relpath(filename)


def _notebook_cell(filename: str) -> str | None:
    """`Cell In[N]` for code a Jupyter kernel compiled from cell N, as IPython's tracebacks
    name it (the kernel's file is a temporary `ipykernel_<pid>/<hash>.py`). Not cached: a
    cell run again maps the same file to its new number."""
    if "ipykernel_" not in filename:
        return None
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    try:
        shell = get() if callable(get) else None
        number = shell.compile._filename_map.get(filename) if shell is not None else None
    except Exception:  # noqa: BLE001  (an IPython without the map: keep the path)
        return None
    return f"Cell In[{number}]" if isinstance(number, int) else None


@functools.lru_cache(maxsize=1024)
def _relpath(filename: str) -> str:
    try:
        rel = Path(filename).resolve().relative_to(_BASE_DIR)
        return str(rel)
    except ValueError:
        pass
    if filename.startswith(PKG_DIR):
        return "traindoctor/" + os.path.relpath(filename, PKG_DIR)
    return filename


def line_text(filename: str, lineno: int) -> str:
    import linecache

    return linecache.getline(filename, lineno).strip()


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


def user_line_in_traceback(frames: list[str]) -> str | None:
    """`path:line` of the innermost user frame in formatted traceback lines (anomaly mode's
    node.metadata["traceback_"], or the text of its warnings)."""
    for text in reversed(frames):  # innermost frame last
        m = _FRAME.search(text)
        if m and is_user_file(m["file"]):
            return f"{relpath(m['file'])}:{m['line']}"
    return None


def library_self(frame: Any, packages: tuple[str, ...]) -> Any:
    """The `self` argument of a frame running a method of one of these packages (its module's
    `__name__` is the package or inside it), else None. `frame.f_locals` is read on those
    frames only: on Python < 3.13 reading it snapshots every local of the frame into a dict
    the frame keeps, and a user's frame would then keep a model its code `del`eted alive
    (a library's frame holds its own locals anyway, for as long as it runs)."""
    code = frame.f_code
    if "self" not in code.co_varnames[: code.co_argcount]:
        return None
    module = frame.f_globals.get("__name__")
    if not isinstance(module, str) or not any(
        module == p or module.startswith(p + ".") for p in packages
    ):
        return None
    return frame.f_locals.get("self")
