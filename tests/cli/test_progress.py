"""The live status line of `traindoctor run` (progress.py): drawn on a real pseudo-terminal
without garbling the script's own lines, and never without a terminal or when turned off."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.cli.conftest import TIMEOUT, env, run_all, td, write
from traindoctor import progress
from traindoctor.findings import Severity

# Prints to stdout and stderr, a line in two pieces with a pause between them (no status line
# may be drawn inside it), a line from a forked DataLoader worker, and trains long enough for
# several redraws.
SCRIPT = """
import sys, time
import torch


class Talks(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        time.sleep(0.6)  # the status line is on the screen by now
        print("a worker says hello")
        return i


torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
for step in range(120):
    i = torch.randint(0, 256, (32,))
    loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
    opt.zero_grad()
    loss.backward()
    opt.step()
    time.sleep(0.01)
    if step % 30 == 0:
        print(f"stdout line {step} " + "x" * 40)
        print(f"stderr line {step}", file=sys.stderr)
        print("half a line, ", end="", flush=True)
        time.sleep(0.6)
        print("then the rest")
    if step == 60:
        list(torch.utils.data.DataLoader(Talks(), num_workers=1))
torch.save([p.detach().clone() for p in model.parameters()], "params.pt")
"""

EXPECTED = [
    line
    for step in range(0, 120, 30)
    for line in (
        f"stdout line {step} " + "x" * 40,
        f"stderr line {step}",
        "half a line, then the rest",
    )
] + ["a worker says hello"]
STATUS = "traindoctor · step"


def on_pty(cwd, *args: str, extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    """`traindoctor ARGS` with stdin, stdout and stderr on one pseudo-terminal: what a
    terminal would have received."""
    master, slave = pty.openpty()
    e = env() | {"TERM": "xterm", **(extra_env or {})}
    cmd = [sys.executable, "-m", "traindoctor", *args]
    p = subprocess.Popen(cmd, cwd=cwd, env=e, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the other side closed (Linux)
                    break
                if not data:
                    break
                chunks.append(data)
            elif p.poll() is not None:
                break
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
    return p.returncode, b"".join(chunks).decode("utf-8", "replace")


def screen(raw: str) -> tuple[list[str], str]:
    """What a terminal shows for `raw`: its finished lines and the line the cursor is on.
    Handles what the status line and the pty use: CR, LF, ESC[K (erase to end of line); colour
    codes are dropped."""
    raw = re.sub(r"\x1b\[[0-9;]*m", "", raw)
    lines: list[str] = []
    line: list[str] = []
    col = i = 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        ch = raw[i]
        i += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    return lines, "".join(line)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folders = {n: tmp_path_factory.mktemp(n) for n in ("tty", "pipe", "env_off", "flag_off")}
    for folder in folders.values():
        write(folder, "train.py", SCRIPT)
    results = run_all(
        {
            "tty": lambda: on_pty(folders["tty"], "run", "train.py"),
            "pipe": lambda: td(folders["pipe"], "run", "train.py"),
            "env_off": lambda: on_pty(
                folders["env_off"], "run", "train.py", extra_env={"TRAINDOCTOR_PROGRESS": "0"}
            ),
            "flag_off": lambda: on_pty(folders["flag_off"], "run", "--no-progress", "train.py"),
        }
    )
    return {name: results[name] for name in results} | {"folders": folders}


@pytest.mark.slow
def test_status_line_is_drawn_and_the_scripts_lines_arrive_intact(runs):
    rc, raw = runs["tty"]
    assert rc == 0, raw
    assert STATUS in raw and "steps/s" in raw, raw  # drawn at least once
    lines, current = screen(raw)
    for expected in EXPECTED:
        assert expected in lines, (expected, lines)
    # Nothing of the status line is left on the screen: cleared before each of the script's
    # writes, and at the end before the report.
    assert not [x for x in lines if STATUS in x] and STATUS not in current, lines
    # Never drawn inside the script's half-written line.
    assert not re.search(r"half a line, [^\n]*\x1b\[K", raw), raw


@pytest.mark.slow
def test_training_is_bit_identical_with_the_status_line(runs):
    folders = runs["folders"]
    assert runs["pipe"].rc == 0, runs["pipe"]
    drawn = (folders["tty"] / "params.pt").read_bytes()
    assert drawn == (folders["pipe"] / "params.pt").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pipe", "env_off", "flag_off"])
def test_no_status_line_without_a_terminal_or_when_turned_off(runs, name):
    if name == "pipe":
        r = runs["pipe"]
        raw = r.stdout + r.stderr
    else:
        rc, raw = runs[name]
        assert rc == 0, raw
    assert STATUS not in raw and "\x1b[K" not in raw, raw
    lines, _ = screen(raw)
    for expected in EXPECTED:
        assert expected in lines


# -- units: what is drawn, and when ---------------------------------------------------------


def test_wanted(monkeypatch):
    monkeypatch.setattr(progress, "_isatty", lambda fd: True)
    for var in (progress.ENV, "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert progress.wanted()
    assert not progress.wanted(no_progress=True)
    assert not progress.wanted(machine_stdout=True)  # stdout is the same terminal
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.wanted()
    monkeypatch.delenv(progress.ENV)
    monkeypatch.setenv("RANK", "1")
    assert not progress.wanted()
    monkeypatch.delenv("RANK")
    monkeypatch.setattr(progress, "_isatty", lambda fd: fd != 2)
    assert not progress.wanted()


class _Stream:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return True


def _doctor(step, severities=()):
    findings = [SimpleNamespace(severity=Severity(s)) for s in severities]
    return SimpleNamespace(state=SimpleNamespace(step=step), findings=findings)


def test_drawn_only_at_a_line_start_and_cleared_before_the_scripts_writes():
    r, w = os.pipe()
    try:
        p = progress.Progress(fd=w)
        p._open_doctors = lambda: [_doctor(11, ("error", "warning", "warning"))]
        p.active = True
        stream = _Stream()
        proxy = progress._Proxy(stream, p)
        p.tick()
        drawn = os.read(r, 4096).decode()
        assert drawn.startswith("\r\x1b[K") and drawn.endswith("\r")
        assert "step 10" in drawn and "1 error · 2 warnings" in drawn
        proxy.write("half ")  # the script's own line, unfinished: cleared first, not drawn over
        assert os.read(r, 4096) == b"\r\x1b[K" and stream.text == "half "
        p.tick()
        assert not p.drawn
        proxy.write("line\n")
        p.tick()
        assert p.drawn and STATUS in os.read(r, 4096).decode()
        p._open_doctors = lambda: []  # the doctor closed: the line goes
        p.tick()
        assert os.read(r, 4096) == b"\r\x1b[K" and not p.drawn
        p.active = False  # after the run: the proxy writes straight through
        proxy.write("after\n")
        assert stream.text.endswith("after\n")
    finally:
        os.close(r)
        os.close(w)


def test_status_text_fits_the_terminal():
    assert progress._fit("x" * 200, 40) == "x" * 38 + "…"
    assert progress._fit("short", 80) == "short"


def test_a_terminal_that_fails_turns_it_off_and_the_scripts_write_goes_on():
    r, w = os.pipe()
    p = progress.Progress(fd=w)
    p._open_doctors = lambda: [_doctor(3)]
    p.active = True
    stream = _Stream()
    proxy = progress._Proxy(stream, p)
    p.tick()
    os.close(r)
    os.close(w)  # the terminal is gone: writing to it fails
    proxy.write("the script's line\n")
    assert stream.text == "the script's line\n" and not p.active
    p.tick()  # nothing more is drawn
