"""TensorBoard: the SummaryWriters the process has open (torch.utils.tensorboard's, which
Lightning's TensorBoardLogger and the Hugging Face Trainer's report_to="tensorboard" create,
and tensorboardX's).

There is no registry of writers: they are found among the live objects (gc.get_referrers on
the writer classes, tens of milliseconds on a million-object heap), only while an open writer's
thread runs (a writer starts one when it opens its event file, and joins it when it closes:
threading.enumerate() says so for free), at the 1st, 2nd, 4th, 8th... diagnosis pass and at
close until one is found. Each finding is a text summary at the step of the pass that made it
(`traindoctor/findings`), the measured values scalars at their own steps, the status a text and
two scalars at the last step. A writer its owner closed before traindoctor's close (the
Trainer's callback does at train end) gets the close-time summary through a writer of ours in
the same log directory (a separate event file, which TensorBoard shows in the same run).
"""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from typing import Any

from ...findings import Finding
from ...timeline import Timeline
from . import content
from .base import Finder, Handle
from .measurements import PREFIX, Point

# Modules whose SummaryWriter is looked for (only those the process imported).
WRITER_MODULES = ("torch.utils.tensorboard.writer", "tensorboardX.writer", "tensorboardX")


class Writer(Handle):
    name = "tensorboard"

    def __init__(self, writer: Any) -> None:
        super().__init__()
        self._ref = weakref.ref(writer)
        self.cls = _library_class(type(writer))
        # tensorboardX's writer has no get_logdir(); its directory is .logdir
        get = getattr(writer, "get_logdir", None)
        self.log_dir = str(get() if callable(get) else writer.logdir)

    @property
    def writer(self) -> Any:
        return self._ref()

    def is_open(self) -> bool:
        w = self._ref()
        return w is not None and getattr(w, "all_writers", None) is not None

    def live(
        self, new: list[Finding], findings: list[Finding], points: list[Point], step: int
    ) -> None:
        self._post(self.writer, new, points, step)

    def close(self, new: list[Finding], report: Any, points: list[Point]) -> None:
        owned = None
        writer = self.writer
        if not self.is_open():
            # Closed by its owner: ours, in the same directory, closed right after.
            writer = owned = self.cls(self.log_dir, filename_suffix=".traindoctor")
        try:
            self._post(writer, new, points, report.steps)
            c = content.counts(report.findings)
            writer.add_text(
                f"{PREFIX}status",
                content.status_line(report.findings, report.steps)
                + "\n\n"
                + content.markdown(report.findings, "traindoctor findings"),
                global_step=report.steps,
            )
            writer.add_scalar(f"{PREFIX}errors", c["errors"], global_step=report.steps)
            writer.add_scalar(f"{PREFIX}warnings", c["warnings"], global_step=report.steps)
            writer.flush()
        finally:
            if owned is not None:
                owned.close()

    @staticmethod
    def _post(writer: Any, new: list[Finding], points: list[Point], step: int) -> None:
        for p in points:
            writer.add_scalar(p.key, p.value, global_step=p.step)
        if new:
            writer.add_text(f"{PREFIX}findings", content.markdown(new), global_step=step)


class TensorBoardFinder(Finder):
    name = "tensorboard"
    label = "TensorBoard SummaryWriter"

    def __init__(self, timeline: Timeline) -> None:
        self._handles: dict[int, Writer] = {}
        self._calls = 0

    def active(self, closing: bool) -> list[Handle]:
        self._calls += 1
        classes = _writer_classes()
        if not classes:
            return []
        any_open = any(h.is_open() for h in self._handles.values())
        # Looked for at passes 1, 2, 4, 8, ... and at close, while none is open and some
        # writer's thread runs.
        due = not any_open and (closing or self._calls & (self._calls - 1) == 0)
        if due and _writer_thread_runs():
            for writer in _instances(classes):
                known = self._handles.get(id(writer))
                fresh = known is None or known.writer is not writer
                if fresh and getattr(writer, "all_writers", None) is not None:
                    self._handles[id(writer)] = Writer(writer)
        # Mid-run the open writers; at close also those found open before (closed since).
        by_dir: dict[str, Writer] = {}
        for h in self._handles.values():
            if not (closing or h.is_open()):
                continue
            # One handle per log directory (two writers on one directory are one run).
            other = by_dir.get(h.log_dir)
            if other is None or h.is_open() and not other.is_open():
                by_dir[h.log_dir] = h
        return list(by_dir.values())

    def seen(self) -> bool:
        return bool(self._handles)


def _writer_classes() -> list[type]:
    out: list[type] = []
    for module in WRITER_MODULES:
        cls = getattr(sys.modules.get(module), "SummaryWriter", None)
        if isinstance(cls, type) and cls not in out:
            out.append(cls)
    # Subclasses' instances refer to their own class, not the base's.
    stack = list(out)
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in out:
                out.append(sub)
                stack.append(sub)
    return out


def _library_class(cls: type) -> type:
    """The library's own SummaryWriter among a writer's classes (a subclass's __init__ may
    take other arguments)."""
    for base in cls.__mro__:
        if base.__name__ == "SummaryWriter" and base.__module__ in WRITER_MODULES:
            return base
    return cls


def _writer_thread_runs() -> bool:
    """Whether an event-file writer thread (tensorboard's or tensorboardX's) is alive."""
    return any(
        type(t).__module__.startswith(("tensorboard.", "tensorboardX."))
        for t in threading.enumerate()
    )


def _instances(classes: list[type]) -> list[Any]:
    found = []
    for obj in gc.get_referrers(*classes):
        if type(obj) in classes:
            found.append(obj)
    return found
