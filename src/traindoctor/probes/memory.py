"""Memory: autograd graphs that outlive their step, and process / CUDA memory on sampled steps.

Each backward on an observed step tags its root node (`grad_fn.metadata`, a dict the node owns)
with a small marker object and keeps only a weak reference to the marker: the marker dies
exactly when the node does. A step's graph normally dies when the user's `loss` variable is
rebound the next step; a graph kept alive by a user reference (`total_loss += loss`, a list of
losses) survives, and so does its marker. At each observed backward the probe counts the
markers of steps older than the previous one that are still alive.

When such graphs pile up, two one-off looks follow (each at most a few times a run):
- a bounded walk of the current backward's graph for markers of earlier steps: does this
  backward run through previous steps' graphs (`total.backward()` on a running total)?
- a `TorchFunctionMode` pushed from after one backward to the next, which never changes a
  call and only looks for the torch call that takes the just-backwarded loss and returns a
  tensor with a graph: the user's accumulation line (`total_loss += loss`).

Memory: the process resident set (psutil when installed, else /proc/self/statm, else
`resource`'s peak RSS) and `torch.cuda.memory_allocated()` (a host-side counter, no sync)
on the observed steps. Cost per observed step: one metadata entry, at most 64 weak
references read, one small file read; nothing on other steps.
"""

from __future__ import annotations

import collections
import os
import weakref
from typing import Any, ClassVar

import torch
from torch.overrides import TorchFunctionMode

from .. import _mode_stack
from .._source import user_source, user_source_with_code
from ..timeline import signal
from .base import AttachContext, Probe, Recorder

GRAPHS_ALIVE = signal(
    "memory.graphs_alive",
    "per observed step: {'alive': graphs of steps before the previous one still alive, "
    "'dead': such graphs seen freed, 'oldest': step of the oldest alive, 'capped': bool}",
)
HOST_RSS = signal("memory.host_rss_mb", "per observed step: process resident memory, MiB")
CUDA_ALLOCATED = signal(
    "memory.cuda_allocated_mb", "per observed step: torch.cuda.memory_allocated(), MiB"
)
_KEY = "_traindoctor_step"
EVERY_STEP_UNTIL = 32  # steps observed one by one; sampled steps after
MAX_MARKERS = 64
SUSPECT_ALIVE = 3  # old graphs alive before the one-off looks are taken
MAX_LOOKS = 3
MAX_WALK = 5000  # graph nodes visited by the containment walk
_MIB = 1024 * 1024


class _Marker:
    """Lives as long as the autograd node that owns it (weakly referenced by the probe)."""

    __slots__ = ("step", "__weakref__")

    def __init__(self, step: int) -> None:
        self.step = step


class MemoryProbe(Probe):
    name = "memory"
    provides: ClassVar[tuple[str, ...]] = (GRAPHS_ALIVE, HOST_RSS, CUDA_ALLOCATED)
    provides_events: ClassVar[tuple[str, ...]] = ("graph_retained", "graph_holder")
    provides_facts: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(self) -> None:
        super().__init__()
        self._markers: list[tuple[int, weakref.ref]] = []
        self._dead = 0
        self._capped = False
        self._walks = 0
        self._finder: _HolderFinder | None = None
        self._finds = 0
        self._holder_found = False
        self._cuda: torch.device | None = None
        self._rss_source = _rss_source()

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        # The first CUDA device in the params' order (a set's order is its hash's: with params
        # on several GPUs the device measured could change from run to run).
        self._cuda = next(
            (p.device for _, p in ctx.named_params() if p.device.type == "cuda"), None
        )
        rec.timeline.facts["memory"] = {
            "host_measure": self._rss_source,
            "cuda_device": str(self._cuda) if self._cuda is not None else None,
        }

    def _observed(self, step: int) -> bool:
        assert self.ctx is not None
        return step <= EVERY_STEP_UNTIL or self.ctx.budget.sampled(step)

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        self._stop_finder()  # the window after the previous backward closes here
        if not self._observed(step):
            return
        alive, oldest = self._count(step)
        rec.record(
            step,
            GRAPHS_ALIVE,
            {"alive": alive, "dead": self._dead, "oldest": oldest, "capped": self._capped},
        )
        self._record_memory(step, rec)
        node = root.grad_fn
        if node is None:
            return
        if alive >= SUSPECT_ALIVE and self._walks < MAX_LOOKS:
            self._walks += 1
            self._walk(step, node, alive, rec)
        if len(self._markers) < MAX_MARKERS:
            marker = _Marker(step)
            node.metadata[_KEY] = marker  # owned by the node: dies with it
            self._markers.append((step, weakref.ref(marker)))
        else:
            self._capped = True
        if alive >= SUSPECT_ALIVE and not self._holder_found and self._finds < MAX_LOOKS:
            self._finds += 1
            targets = [root] if root is loss else [root, loss]
            self._finder = _HolderFinder(step, [weakref.ref(t) for t in targets], self._on_found)

    def on_after_backward(self, step: int, rec: Recorder) -> None:
        # Pushed after the backward so that the backward itself runs without it.
        if self._finder is not None and not self._finder.active:
            self._finder.start()

    def _count(self, step: int) -> tuple[int, int | None]:
        """Old graphs (steps before step - 1) still alive; forget the freed ones."""
        alive = 0
        oldest: int | None = None
        kept: list[tuple[int, weakref.ref]] = []
        for s, ref in self._markers:
            if ref() is None:
                self._dead += 1  # a graph freed as graphs should be
                continue
            kept.append((s, ref))
            if s < step - 1:
                alive += 1
                oldest = s if oldest is None else min(oldest, s)
        self._markers = kept
        return alive, oldest

    def _walk(self, step: int, node: Any, alive: int, rec: Recorder) -> None:
        """Does this backward's graph reach the root of an earlier step's graph?"""
        reached: set[int] = set()
        seen = {id(node)}
        frontier = collections.deque([node])
        visited = 0
        while frontier and visited < MAX_WALK:
            n = frontier.popleft()
            visited += 1
            marker = n.metadata.get(_KEY) if n is not node else None
            if marker is not None and marker.step < step:
                reached.add(marker.step)
            for nxt, _ in n.next_functions:
                if nxt is not None and id(nxt) not in seen:
                    seen.add(id(nxt))
                    frontier.append(nxt)
        rec.event(
            step,
            "graph_retained",
            alive=alive,
            backward_reaches=sorted(reached)[:20],
            reaches_count=len(reached),
            walk_complete=not frontier,
            nodes_walked=visited,
            backward_source=user_source(2),
        )

    def _on_found(self, step: int, op: str, where: dict[str, str] | None) -> None:
        assert self.ctx is not None
        self._holder_found = True
        facts = where or {}
        self.ctx.rec.event(
            self.ctx.state.step,
            "graph_holder",
            loss_step=step,
            op=op,
            source=facts.get("source"),
            code=facts.get("code"),
        )

    def _record_memory(self, step: int, rec: Recorder) -> None:
        rss = _rss_mb(self._rss_source)
        if rss is not None:
            rec.record(step, HOST_RSS, round(rss, 3))
        if self._cuda is not None:
            # A counter kept by the caching allocator on the host: no device sync.
            rec.record(step, CUDA_ALLOCATED, torch.cuda.memory_allocated(self._cuda) / _MIB)

    def _stop_finder(self) -> None:
        if self._finder is not None:
            self._finder.stop()
            self._finder = None

    def detach(self) -> None:
        self._stop_finder()
        super().detach()


class _HolderFinder(TorchFunctionMode):
    """Finds the user's line that keeps a loss's graph: the first torch call that takes that
    loss and returns a tensor with a graph. It runs each call once, unchanged, and reads only
    host metadata (`is`, `requires_grad`)."""

    def __init__(self, step: int, targets: list[weakref.ref], on_found: Any) -> None:
        super().__init__()
        self.step = step
        self.targets = targets
        self.on_found = on_found
        self.active = False
        self.done = False

    def start(self) -> None:
        # At the bottom: a user mode entered and left while this one is on pops its own entry.
        _mode_stack.push_bottom(self)
        self.active = True

    def stop(self) -> None:
        """Take the mode off the stack wherever it sits (modes pushed above it stay)."""
        if not self.active:
            return
        self.active = False
        _mode_stack.remove(self)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if not self.done:
            try:
                with _mode_stack.UsersOff():  # the user's subclasses and modes do not see it
                    self._look(func, args, out)
            except Exception:  # noqa: BLE001  (never into the user's loop; give up looking)
                self.done = True
        return out

    def _look(self, func: Any, args: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return
        targets = [t for r in self.targets if (t := r()) is not None]
        if not targets:
            self.done = True
            return
        if any(a is t for a in args[:4] for t in targets):
            self.done = True
            self.on_found(self.step, getattr(func, "__name__", str(func)), user_source_with_code(3))


def _rss_source() -> str | None:
    try:
        import psutil  # noqa: F401

        return "psutil"
    except ImportError:
        pass
    if os.path.exists("/proc/self/statm"):
        return "/proc/self/statm"
    try:
        import resource  # noqa: F401

        return "resource.ru_maxrss (peak)"
    except ImportError:
        return None


def _rss_mb(source: str | None) -> float | None:
    try:
        if source == "psutil":
            return _process().memory_info().rss / _MIB
        if source == "/proc/self/statm":
            with open("/proc/self/statm", encoding="ascii") as fh:
                pages = int(fh.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / _MIB
        if source and source.startswith("resource"):
            import resource
            import sys

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak / (_MIB if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB else
    except (OSError, ValueError, ImportError):
        return None
    return None


_PROCESS: list[Any] = []


def _process() -> Any:
    """psutil's handle of this process, made once (making one costs ~50 us)."""
    if not _PROCESS:
        import psutil

        _PROCESS.append(psutil.Process())
    return _PROCESS[0]
