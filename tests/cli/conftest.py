"""Helpers for end-to-end tests of the `traindoctor` command: run it as a subprocess in a temp
folder on tiny scripts the test writes there.

Every run pays for a fresh Python and torch import (seconds), so a test module declares its
runs up front and `run_all` starts them side by side; the tests then only read the results."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BIN = Path(sys.executable).with_name("traindoctor")
if _BIN.exists():
    TRAINDOCTOR = [str(_BIN)]
elif shutil.which("traindoctor"):
    TRAINDOCTOR = [shutil.which("traindoctor")]
else:  # pragma: no cover  (not installed as a script: the module form is the same CLI)
    TRAINDOCTOR = [sys.executable, "-m", "traindoctor"]

TIMEOUT = 120
WORKERS = 4


def env() -> dict[str, str]:
    e = dict(os.environ)
    # One thread per process: the runs go side by side; a wide console keeps lines unwrapped.
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    e.pop("PYTHONPATH", None)
    return e


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, marker: str) -> int:
    """1-based line number of the first line that contains `marker`."""
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if marker in line:
            return i
    raise AssertionError(f"{marker!r} not in {path}")


@dataclass
class Result:
    cwd: Path
    args: list[str]
    rc: int
    stdout: str
    stderr: str

    def run_dir(self, out: str = "traindoctor-runs") -> Path:
        dirs = [d for d in (self.cwd / out).iterdir() if d.is_dir()]
        assert len(dirs) == 1, f"expected one run directory under {out}, got {dirs}"
        return dirs[0]

    def findings(self, out: str = "traindoctor-runs") -> dict[str, Any]:
        return json.loads((self.run_dir(out) / "findings.json").read_text())

    def report_md(self, out: str = "traindoctor-runs") -> str:
        return (self.run_dir(out) / "report.md").read_text()

    def codes(self, out: str = "traindoctor-runs") -> list[str]:
        return [f["code"] for f in self.findings(out)["findings"]]

    def finding(self, code: str, out: str = "traindoctor-runs") -> dict[str, Any]:
        for f in self.findings(out)["findings"]:
            if f["code"] == code:
                return f
        raise AssertionError(f"{code} not among {self.codes(out)}\n{self}")

    def __str__(self) -> str:
        return (
            f"$ traindoctor {' '.join(self.args)}  (exit {self.rc})\n"
            f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )


def td(cwd: Path, *args: str, timeout: float = TIMEOUT) -> Result:
    """`traindoctor ARGS` in `cwd`."""
    p = subprocess.run(
        [*TRAINDOCTOR, *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(cwd, list(args), p.returncode, p.stdout, p.stderr)


def python(cwd: Path, *args: str, timeout: float = TIMEOUT) -> Result:
    """`python ARGS` in `cwd`, with the same interpreter and environment."""
    p = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )
    return Result(cwd, ["<python>", *args], p.returncode, p.stdout, p.stderr)


def td_signal(
    cwd: Path, sig: signal.Signals, *args: str, marker: str = "READY", timeout: float = TIMEOUT
) -> Result:
    """Start `traindoctor ARGS`, wait until the script prints `marker`, send `sig`, collect."""
    p = subprocess.Popen(
        [*TRAINDOCTOR, *args],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        assert p.stdout is not None
        for line in p.stdout:
            seen.append(line)
            if marker in line:
                p.send_signal(sig)
                break
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        p.kill()
        p.communicate()
        raise
    return Result(cwd, list(args), p.returncode, "".join(seen) + out, err)


def run_all(jobs: dict[str, Callable[[], Result]]) -> dict[str, Result]:
    """Run independent jobs side by side; a job that raises re-raises in the test that reads it."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
    return _Results({name: f for name, f in futures.items()})


class _Results(dict):
    def __getitem__(self, name: str) -> Result:
        return super().__getitem__(name).result()


def run_scripts(folders: Any, scripts: dict[str, str], *args: str) -> dict[str, Result]:
    """Write each script as train.py in a folder of its own (`folders` is pytest's
    tmp_path_factory) and run `traindoctor ARGS train.py` (default: `run`) on all, side by side."""
    jobs = {}
    for name, text in scripts.items():
        folder = folders.mktemp(name)
        write(folder, "train.py", text)
        jobs[name] = lambda folder=folder: td(folder, *(args or ("run",)), "train.py")
    return run_all(jobs)


def loud(result: Result) -> list[str]:
    """Codes of the warnings and errors of a run."""
    return [f["code"] for f in result.findings()["findings"] if f["severity"] != "info"]


def reported_batch(buggy: dict[str, str], healthy: dict[str, str]) -> tuple[Any, Any]:
    """What every module of reproduced reports shares: the `runs` fixture (each buggy script
    and its fixed twin under `traindoctor run`, side by side, once per module) and the test
    that every fixed twin ends with no warning or error. Use as
    `runs, test_fixed_twins_are_silent = reported_batch(BUGGY, HEALTHY)`."""
    import pytest

    @pytest.fixture(scope="module")
    def runs(tmp_path_factory: Any) -> dict[str, Result]:
        return run_scripts(tmp_path_factory, {**buggy, **healthy})

    @pytest.mark.parametrize("name", sorted(healthy))
    def test_fixed_twins_are_silent(runs: dict[str, Result], name: str) -> None:
        r = runs[name]
        assert r.rc == 0, r
        assert loud(r) == [], r

    return runs, test_fixed_twins_are_silent


def fixed_twin(text: str, edits: list[tuple[str, str]]) -> str:
    """A reported script with the thread's fix applied (each `old` must be in it)."""
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


def top3(result: Result, code: str) -> dict:
    """The finding `code`, asserted among the run's first three warnings/errors."""
    top = loud(result)[:3]
    assert code in top, f"{code} not in the top 3 {top}\n{result}"
    return result.finding(code)


def script_line(result: Result, marker: str) -> str:
    """`train.py:N`, the line of the run's script that holds `marker`."""
    return f"train.py:{line_of(result.cwd / 'train.py', marker)}"
