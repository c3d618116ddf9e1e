"""Live progress of `traindoctor run` / `check` in a terminal: one status line on stderr (step,
steps/s, findings so far by severity), redrawn at most 4 times a second.

It costs the training loop nothing per step: a daemon thread wakes every 0.25 s and reads what
the Doctor exposes (`open_doctors()`, `state.step`, `findings`); no hook, no listener. It never
garbles the script's own output: while it is on, `sys.stdout` and `sys.stderr` (those that are
terminals) write through a thin proxy that clears the status line (`\\r\\x1b[K`) before the
script's text, and the line is drawn again only when the script's last write ended a line (a
progress bar of the script's own, left mid-line, is never drawn over). The status line leaves
the cursor at column 0, so a write that bypasses `sys.stdout` (a C extension, a subprocess)
starts where a line starts. Off when stderr is not a terminal, with `--no-progress`, with
TRAINDOCTOR_PROGRESS=0, with TERM=dumb, on the non-zero ranks of a distributed job, and when a
machine-readable format goes to stdout on the same terminal. It reads, never writes, the
training's state: the run, its findings and its verdict are the same with it or without it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, TextIO

ENV = "TRAINDOCTOR_PROGRESS"
INTERVAL = 0.25  # seconds between two redraws, at most 4 a second
RATE_WINDOW = 8  # redraws over which steps/s is measured (~2 s)
CLEAR = "\r\x1b[K"


def wanted(no_progress: bool = False, machine_stdout: bool = False) -> bool:
    """Whether to draw: stderr is a terminal and nothing turned it off."""
    if no_progress or os.environ.get(ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    if os.environ.get("TERM") == "dumb" or not _isatty(2):
        return False
    if machine_stdout and _isatty(1):
        return False  # the machine-readable output shares the terminal with it
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK")
    return rank in (None, "", "0")


def live(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """The status line for the duration of the `with` block (nothing when not enabled)."""
    return Progress() if enabled else contextlib.nullcontext()


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except (OSError, ValueError):
        return False


class Progress:
    """The status line: drawn by a daemon thread, cleared around the script's writes."""

    def __init__(self, fd: int = 2, interval: float = INTERVAL) -> None:
        self.fd = fd
        self.interval = interval
        self.lock = threading.RLock()
        self.active = False
        self.drawn = False  # the status line is on the screen now
        self.at_line_start = True  # the script's last write on the terminal ended a line
        self.child = False  # a process forked while the line was on (a DataLoader worker)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: list[tuple[str, TextIO]] = []
        self._rate: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW)
        self._open_doctors: Any = None
        self.encoding = "utf-8"
        self.sep = " · "

    # -- the block ----------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        try:
            from .doctor import open_doctors  # here, not in the thread: no import races

            self._open_doctors = open_doctors
            self.encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
            if not _encodes("·…", self.encoding):
                self.sep = " | "  # a terminal without UTF-8 (LANG=C)
            # The script's streams, wrapped while the line is on: not a Patch (_patching.py),
            # whose restore is exact, because a script that replaces sys.stdout keeps its own.
            if _stream_isatty(sys.stdout):
                self._saved.append(("stdout", sys.stdout))
                sys.stdout = _Proxy(sys.stdout, self)
            if _stream_isatty(sys.stderr):
                self._saved.append(("stderr", sys.stderr))
                sys.stderr = _Proxy(sys.stderr, self)
            self.active = True
            global _current
            _current = self
            self._thread = threading.Thread(
                target=self._loop, name="traindoctor-progress", daemon=True
            )
            self._thread.start()
        except Exception:  # noqa: BLE001  (a status line is never worth failing the run)
            self._restore()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval + 1)
        with self.lock:
            self._clear()
            self.active = False
        self._restore()

    def _restore(self) -> None:
        """Put the streams back where they are still our proxies (a script that replaced
        sys.stdout keeps its own; our proxy, if it holds one, writes straight through)."""
        for name, stream in self._saved:
            now = sys.stdout if name == "stdout" else sys.stderr
            if isinstance(now, _Proxy) and now._progress is self:
                if name == "stdout":
                    sys.stdout = stream
                else:
                    sys.stderr = stream
        self._saved = []

    # -- drawing ------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.tick()
        except Exception:  # noqa: BLE001  (off, quietly: the run goes on)
            self.active = False

    def tick(self) -> None:
        """One redraw, if a doctor is watching and the cursor is at the start of a line."""
        text = self.status(time.monotonic())
        with self.lock:
            if not self.active:
                return
            if text is None:
                self._clear()
            elif self.at_line_start:
                self._write(CLEAR + _fit(text, _width(self.fd), self.sep != " | ") + "\r")
                self.drawn = True

    def status(self, now: float) -> str | None:
        """`traindoctor · step 120 · 35.2 steps/s · 1 error · 2 warnings`, or None while no
        doctor is watching."""
        doctors = self._open_doctors() if self._open_doctors is not None else []
        if not doctors:
            return None
        doctor = max(doctors, key=lambda d: d.state.step)
        step = max(doctor.state.step - 1, 0)  # steps completed
        self._rate.append((now, step))
        (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
        parts = [f"traindoctor{self.sep}step {step}"]
        if t1 > t0 and s1 >= s0:
            parts.append(f"{(s1 - s0) / (t1 - t0):.3g} steps/s")
        findings = list(doctor.findings)
        counts = {}
        for f in findings:
            sev = getattr(getattr(f, "severity", None), "value", "info")
            counts[sev] = counts.get(sev, 0) + 1
        for sev, word in (("error", "error"), ("warning", "warning"), ("info", "info")):
            n = counts.get(sev, 0)
            if n:
                parts.append(f"{n} {word}{'s' if n != 1 and sev != 'info' else ''}")
        if not findings:
            parts.append("no findings yet")
        return self.sep.join(parts)

    def _clear(self) -> None:
        if self.drawn:
            self._write(CLEAR)
            self.drawn = False

    def _write(self, text: str) -> None:
        """To the terminal's file descriptor; a terminal that fails (closed, non-blocking and
        full) turns the status line off instead of failing the script's own write."""
        data = text.encode(self.encoding, "replace")
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            self.active = False
            self.drawn = False

    # -- the script's writes (under the lock, from the proxies) -------------------------------
    def before_write(self) -> None:
        self._clear()

    def after_write(self, text: str) -> None:
        if text:
            self.at_line_start = text.endswith("\n")


class _Proxy:
    """sys.stdout / sys.stderr while the status line is on: every attribute is the stream's;
    write() clears the status line first."""

    def __init__(self, stream: TextIO, progress: Progress) -> None:
        self._stream = stream
        self._progress = progress

    def write(self, text: str) -> int:
        progress = self._progress
        if not progress.active:
            if progress.child and text:
                # A forked worker cannot know whether its parent's status line is on the
                # screen: a line it starts clears the terminal's line first.
                if progress.at_line_start:
                    self._stream.write(CLEAR)
                progress.at_line_start = text.endswith("\n")
            return self._stream.write(text)
        with progress.lock:
            if progress.drawn:
                # The script's pending bytes (a line-buffered partial line) go first.
                self._stream.flush()
                progress.before_write()
            n = self._stream.write(text)
            progress.after_write(text)
            return n

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        if name in ("_stream", "_progress"):  # a copy being built: no endless recursion
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._stream)


def _stream_isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _width(fd: int) -> int:
    """The terminal's width (COLUMNS, then 80, where it reports none: a fresh pseudo-terminal
    says 0)."""
    try:
        columns = os.get_terminal_size(fd).columns
    except OSError:
        columns = 0
    if columns <= 0:
        env = os.environ.get("COLUMNS", "")
        columns = int(env) if env.isdigit() and int(env) > 0 else 80
    return columns


def _fit(text: str, width: int, unicode: bool = True) -> str:
    """Never wider than the terminal: a wrapped status line could not be cleared with `\\r`."""
    limit = max(width - 1, 10)
    return text if len(text) <= limit else text[: limit - 1] + ("…" if unicode else ">")


def _encodes(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except (LookupError, UnicodeError):
        return False
    return True


# A forked child (a DataLoader worker) must never wait on a lock its parent's thread held at
# fork time, nor draw: its proxies write through, clearing the line before a line they start.
_current: Progress | None = None


def _after_fork_in_child() -> None:
    progress = _current
    if progress is not None:
        progress.child = progress.active
        progress.active = False
        progress.drawn = False
        progress.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
