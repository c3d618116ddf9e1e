"""Issue 15's side-by-side bench: traindoctor's cost per phase of a run, on five model shapes.

For each shape (a 1M-parameter MLP, a small nanoGPT-like model, a CIFAR-sized ResNet with
BatchNorm, and chains of tiny Linear layers holding 2,000 and 10,000 parameter tensors) it
trains the same model from the same seed on the same batches, plain and watched, in
alternating order within one process (plain, watched, then watched, plain, ...; the method of
bench/overhead.py), and prints the ratio watched / plain of the summed step time for

- steps 1-3 (the structural steps), steps 4-50, and the steady state (steps 51-N);
- the whole loop, and the whole loop plus attach (td.watch) and close() time;
- the median step of the steady state (sampled steps are outliers, so it is near 1);
- the long-run ratio extrapolated to N = 10^4 and 10^5 steps (a short loop is dominated by
  steps 1-3, so its whole-loop ratio says little about a real run). Computed from the measured
  phases in CPU time, summed over the rounds, with the steps of the steady state (51-M, M the
  steps measured) told apart by the watched run's deterministic schedule, read before each
  step: pass steps (diagnosis_schedule.diagnose_due: a mid-run rule pass may run there),
  sampled steps, and the other (unsampled) steps. Measured: the one-off extra X = (watched -
  plain) of steps 1-50, plus attach and close (their CPU time); the per-step extras e_p, e_s,
  e_u = (watched - plain) summed over each kind / its steps; the plain time P of steps 1-50 and
  p per steady step. Then, with n_p(N) the due steps in 51-N (each assumed to run: an upper
  bound, a pass that does not fit the budget is skipped), r = 1 / (the governor's target
  interval, or its interval at the end when it set none) and n = N - 50 - n_p(N):
  ratio(N) = 1 + (X + n_p e_p + n (r e_s + (1 - r) e_u)) / (P + (N - 50) p).
  Assumed constant, which a longer measurement would refine: a pass's cost (it grows with the
  in-memory timeline until the timeline is bounded, timeline_retention.py), and the rate of
  the read-back and flush steps (every 25th, inside e_u); the folds every 1,000 steps are not
  in a window under 1,000 steps. Without a sampled step in 51-M, e_s comes from steps 4-50;
  without a due step in 51-M (M under 100), the passes are left out (said in the table);
each measured twice: in this process's CPU time (time.process_time: on a machine other jobs
share, waiting for a core is left out, so it is the steadier figure) and in wall-clock time;

The steady state's unsampled steps are measured a second way, **interleaved** (the method of
bench/overhead.py --interleaved, for any shape): two copies of the same run in one process, a
plain step and a watched step in turn (the order alternating), so that the machine's load,
which moves by the second, weighs on both sides alike. Sequential runs of the same plain code
differ by 5-24% on the 10,000-tensor model (measured: plain, plain, watched, plain in one
process), which is larger than the every-step cost being measured; interleaved, two plain
sides (`--control`) agree within about 1%. The plain side calls torch.autograd.backward as saved
at import (our patched backward would make the watched doctor see its passes); the other
patches are process-wide and do run on the plain side: the bench counts the calls into
traindoctor's code on one plain step (the loss wrapper's pass-through, a handful) and says so.
The collector's time (gc.callbacks) is reported per side: our objects make every full
collection of the process longer, and interleaved the plain side pays its share of that;
`--control` gives the same figure without a doctor. With `--gc-apart STEPS` the collector is
priced apart: a plain run and a watched run of 50 + STEPS steps, each alone in a fresh process
(its heap holds its own model only), give the collector's CPU time per step over the last STEPS;
the long-run figure then takes the interleaved unsampled extra without either side's GC time,
plus that measured extra GC per step (measured on the 10,000-tensor model: the interleaved
run's watched side spent 52 ms a step in the collector against 6 ms on the plain side, while
apart the two differ by ~4 ms a step). With `--forced-sampled` too, each side's fresh process
runs that many more steps, every one sampled on the watched side, and the sampled step is
also given with the collector priced the same way ("forced sampled steps (cpu), GC apart"):
interleaved, one full collection (~0.5 s on that model, walking both sides' objects) falls on
one side of one pair, which moved the summed ratio of 24 pairs by several points from run to
run. The long-run extrapolation takes the
unsampled and the pass steps' extra from the interleaved run (as a share of its plain step,
times the sequential plain step; a pass step is priced sequentially where the interleaved
run had none, and left out where neither had one) and everything else (steps 1-50, sampled
steps, attach/close) from the sequential runs; the output names the method of each figure.

with the number of hook handles created (torch's RemovableHandle counter, which every
register_*_hook of a module, a tensor or an autograd node increments) at attach, in steps
1-3 and per step after, and whether the parameters came out bit-identical.

The same is measured on the small GPT for `torch.autograd.detect_anomaly()` and, where wandb is
installed, `wandb.watch(model, log="all", log_freq=100)` in offline mode (WANDB_MODE=offline,
WANDB_DIR in a temporary folder: nothing reaches the network).

Run with one thread, and say the machine's load (`uptime`) next to the figures:

    OMP_NUM_THREADS=1 python bench/always_on.py [--quick] [--shapes mlp,gpt] [--steps 200]
        [--rounds 2] [--interleaved 200] [--control] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

import traindoctor as td
from traindoctor.diagnosis_schedule import diagnose_due

# Saved before any attach: the plain side of the interleaved run calls backward without our
# patch, so that the watched doctor does not see the plain side's backward passes.
_BACKWARD = torch.autograd.backward

# Where the runs train (--device): "cpu", or "cuda" where a GPU is lent (issue 15's CUDA goal:
# <= 1.01x at steady state, no host synchronisation per step).
DEVICE = torch.device("cpu")


def _on_device(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(DEVICE) for t in batch)


def _settle() -> None:
    """Wait for the device's queued work, so that a step's wall time is its own (CUDA)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


class _SyncCounter:
    """Host synchronisations the step's code made (CUDA only: torch.cuda.set_sync_debug_mode
    warns on each synchronizing call: .item(), .cpu(), nonzero, a copy to the host, ...)."""

    def __init__(self) -> None:
        self.count = 0
        self._catch: Any = None

    def __enter__(self) -> _SyncCounter:
        if DEVICE.type == "cuda":
            self._catch = warnings.catch_warnings(record=True)
            self._seen = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._catch is not None:
            torch.cuda.set_sync_debug_mode("default")
            self.count = sum("synchroniz" in str(w.message) for w in self._seen)
            self._catch.__exit__(*exc)
            self._catch = None


_PACKAGE = os.path.dirname(td.__file__)

# -- the five model shapes of issue 15 --------------------------------------------------------


def mlp_1m() -> nn.Module:
    """bench/overhead.py's MLP: ~1.06M parameters in 36 tensors."""
    layers: list[nn.Module] = []
    for _ in range(16):
        layers += [nn.Linear(256, 256), nn.GELU()]
    return nn.Sequential(*layers, nn.LayerNorm(256), nn.Linear(256, 10))


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class SmallGPT(nn.Module):
    """nanoGPT's layout (token + position embeddings, pre-LN blocks, tied lm_head), small."""

    def __init__(self, vocab: int = 256, block: int = 64, dim: int = 128, layers: int = 4) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(block, dim)
        self.h = nn.ModuleList(Block(dim, 4) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as nanoGPT does

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (one basic block per stage, 16/32/64 channels), CPU-sized."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.layers = nn.Sequential(
            BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2)
        )
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ManyTensors(nn.Module):
    """`tensors` parameter tensors in tiny residual Linear layers (a weight and a bias each)."""

    def __init__(self, tensors: int, width: int = 16) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(tensors // 2 - 1))
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.blocks:
            x = x + 0.1 * torch.tanh(layer(x))
        return self.head(x)


Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Shape:
    build: Callable[[], nn.Module]
    data: Callable[[torch.Generator], Batch]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]


def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


SHAPES: dict[str, Shape] = {
    "mlp": Shape(
        mlp_1m,
        lambda g: (torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g)),
        F.cross_entropy,
        _adamw,
    ),
    "gpt": Shape(
        SmallGPT,
        lambda g: (
            torch.randint(0, 256, (8, 64), generator=g),
            torch.randint(0, 256, (8, 64), generator=g),
        ),
        _lm_loss,
        _adamw,
    ),
    "resnet": Shape(
        SmallResNet,
        lambda g: (
            torch.randn(32, 3, 32, 32, generator=g),
            torch.randint(0, 10, (32,), generator=g),
        ),
        F.cross_entropy,
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4),
    ),
    "t2000": Shape(
        lambda: ManyTensors(2000),
        lambda g: (torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g)),
        F.cross_entropy,
        _adamw,
    ),
    "t10000": Shape(
        lambda: ManyTensors(10000),
        lambda g: (torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g)),
        F.cross_entropy,
        _adamw,
    ),
}

# -- what watches the run ---------------------------------------------------------------------


class Watcher:
    """Plain (nothing attached); subclasses attach something and detach it in close()."""

    name = "plain"

    def attach(self, model: nn.Module, opt: torch.optim.Optimizer, out_dir: str) -> None:
        pass

    def context(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def log(self, loss: torch.Tensor) -> None:
        pass

    def sampled(self) -> bool | None:
        """Whether the step about to run is sampled (None: nothing samples); read untimed."""
        return None

    def step(self) -> int | None:
        """The number of the step about to run (None: nothing counts steps); read untimed."""
        return None

    def close(self) -> None:
        pass


class Traindoctor(Watcher):
    name = "traindoctor"

    def attach(self, model: nn.Module, opt: torch.optim.Optimizer, out_dir: str) -> None:
        self.doc = td.watch(model, opt, out_dir=out_dir, console=False)

    def log(self, loss: torch.Tensor) -> None:
        self.doc.log(loss=loss)

    def sampled(self) -> bool | None:
        return self.doc.budget.sampled(self.doc.step)

    def step(self) -> int | None:
        return self.doc.step

    def close(self) -> None:
        history = self.doc.budget.history
        self.interval = history[-1][2] if history else self.doc.budget.interval
        self.target = self.doc.budget.target
        self.report = self.doc.close()


class DetectAnomaly(Watcher):
    name = "detect_anomaly"

    def context(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autograd.detect_anomaly()


class WandbWatch(Watcher):
    """wandb.watch(log="all", log_freq=100), offline; wandb.log(loss) every step, which is
    how its gradient histograms get written (it reads the loss back: one host sync)."""

    name = "wandb.watch"

    def attach(self, model: nn.Module, opt: torch.optim.Optimizer, out_dir: str) -> None:
        import wandb

        os.environ["WANDB_MODE"] = "offline"
        os.environ["WANDB_DIR"] = out_dir
        os.environ["WANDB_SILENT"] = "true"
        self.run = wandb.init(project="traindoctor-bench", dir=out_dir, mode="offline")
        wandb.watch(model, log="all", log_freq=100)

    def log(self, loss: torch.Tensor) -> None:
        self.run.log({"loss": loss.item()})

    def close(self) -> None:
        self.run.finish()


# -- one run, and the side-by-side comparison -------------------------------------------------


@dataclass
class Run:
    times: list[float]  # seconds per step, wall clock
    cpu: list[float]  # seconds per step, this process's CPU time (steadier on a busy machine)
    attach: float = 0.0
    attach_cpu: float = 0.0
    close: float = 0.0
    close_cpu: float = 0.0
    handles_attach: int = 0
    handles_first3: int = 0
    handles_after: int = 0
    params: list[torch.Tensor] = field(default_factory=list, repr=False)
    sampled: list[bool | None] = field(default_factory=list, repr=False)
    numbers: list[int | None] = field(default_factory=list, repr=False)
    syncs: list[int] = field(default_factory=list, repr=False)  # host syncs per step (CUDA)
    interval: int | None = None
    target: int | None = None
    findings: list[str] = field(default_factory=list)


def run(shape: Shape, steps: int, watcher: Watcher, out_dir: str) -> Run:
    torch.manual_seed(0)
    model = shape.build().to(DEVICE)
    opt = shape.optimizer(model)
    g = torch.Generator().manual_seed(1)
    data = [_on_device(shape.data(g)) for _ in range(16)]
    h0 = RemovableHandle.next_id
    t0, c0 = time.perf_counter(), time.process_time()
    watcher.attach(model, opt, out_dir)
    attach, attach_cpu = time.perf_counter() - t0, time.process_time() - c0
    h1 = RemovableHandle.next_id
    h3 = h1
    times, cpu, syncs = [], [], []
    sampled: list[bool | None] = []
    numbers: list[int | None] = []
    with watcher.context():
        for i in range(steps):
            x, y = data[i % len(data)]
            sampled.append(watcher.sampled())  # before the clocks start
            numbers.append(watcher.step())
            _settle()
            t0, c0 = time.perf_counter(), time.process_time()
            with _SyncCounter() as counted:
                opt.zero_grad(set_to_none=True)
                loss = shape.loss(model(x), y)
                loss.backward()
                opt.step()
                watcher.log(loss)
            _settle()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            syncs.append(counted.count)
            if i == 2:
                h3 = RemovableHandle.next_id
    h_end = RemovableHandle.next_id
    t0, c0 = time.perf_counter(), time.process_time()
    watcher.close()
    close, close_cpu = time.perf_counter() - t0, time.process_time() - c0
    out = Run(times, cpu, attach, attach_cpu, close, close_cpu, h1 - h0, h3 - h1, h_end - h3)
    out.params = [p.detach().cpu().clone() for p in model.parameters()]
    out.syncs = syncs
    out.sampled = sampled
    out.numbers = numbers
    if isinstance(watcher, Traindoctor):
        out.interval = watcher.interval
        out.target = watcher.target
        out.findings = [f.code for f in watcher.report.findings]
    return out


PHASES = (("steps 1-3", 0, 3), ("steps 4-50", 3, 50), ("steady 51-N", 50, None))


def first_steps(shape: Shape, pairs: int, out_dir: str) -> dict[str, Any]:
    """Steps 1-3 priced apart from the run order: one plain and one watched 3-step run thrown
    away (what the first run of a process pays: lazy imports, the allocator's first pages),
    then `pairs` fresh pairs, which goes first alternating; ratios of their CPU times."""
    run(shape, 3, Watcher(), out_dir)
    run(shape, 3, Traindoctor(), out_dir)
    ratios: list[float] = []
    plain_s = watched_s = 0.0
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        got: dict[bool, float] = {}
        for w in order:
            got[w] = sum(run(shape, 3, Traindoctor() if w else Watcher(), out_dir).cpu[:3])
        ratios.append(got[True] / got[False])
        plain_s += got[False]
        watched_s += got[True]
    return {
        "first steps: pairs": pairs,
        "first steps 1-3 summed (cpu)": watched_s / plain_s,
        "first steps 1-3 median pair (cpu)": statistics.median(ratios),
        "first steps 1-3 pairs over 2x": sum(r > 2.0 for r in ratios),
        "first steps 1-3 ms per run, plain / watched (cpu)": (
            f"{plain_s / pairs * 1e3:.0f} / {watched_s / pairs * 1e3:.0f}"
        ),
    }


def compare(
    shape: Shape,
    steps: int,
    rounds: int,
    make: Callable[[], Watcher],
    out_dir: str,
    interleaved: int = 0,
    control: bool = False,
    forced: int = 0,
    gc_steps: int = 0,
    shape_name: str = "",
) -> dict[str, Any]:
    """Plain and watched runs alternated `rounds` times; ratios of the summed phase times.
    With `interleaved` steps (traindoctor only), the interleaved run too (and the control,
    plain / plain, with `control`), whose unsampled share the long-run figure uses; `forced`
    more interleaved steps with every step sampled price a sampled step."""
    plain: list[Run] = []
    watched: list[Run] = []
    for i in range(rounds):
        # Alternate which goes first so that drift in machine speed cancels out.
        order = (False, True) if i % 2 == 0 else (True, False)
        for w in order:
            r = run(shape, steps, make() if w else Watcher(), out_dir)
            (watched if w else plain).append(r)

    def phase_sum(runs: list[Run], lo: int, hi: int | None, clock: str = "times") -> float:
        return sum(sum(getattr(r, clock)[lo:hi]) for r in runs)

    out: dict[str, Any] = {"steps": steps, "rounds": rounds}
    for clock, tag in (("cpu", "cpu"), ("times", "wall")):
        for label, lo, hi in PHASES:
            if lo < steps:
                out[f"{label} ({tag})"] = phase_sum(watched, lo, hi, clock) / phase_sum(
                    plain, lo, hi, clock
                )
        loop_w, loop_p = phase_sum(watched, 0, None, clock), phase_sum(plain, 0, None, clock)
        out[f"whole loop ({tag})"] = loop_w / loop_p
        if steps > 50:
            med = [
                statistics.median(getattr(w, clock)[50:])
                / statistics.median(getattr(p, clock)[50:])
                for w, p in zip(watched, plain, strict=True)
            ]
            out[f"steady median step ({tag})"] = statistics.median(med)
    # The same schedule in every watched run (counted, not timed): the plain runs' steps of
    # the same numbers are the comparison.
    flags = watched[0].sampled
    if flags and flags[0] is not None:
        for label, lo, want in (
            ("sampled steps 4-N", 3, True),
            ("unsampled steps 51-N", 50, False),
        ):
            idx = [i for i in range(lo, steps) if bool(flags[i]) is want]
            if idx:
                w = sum(r.cpu[i] for r in watched for i in idx)
                p = sum(r.cpu[i] for r in plain for i in idx)
                out[f"{label} (cpu)"] = w / p
                out[f"{label}: steps"] = len(idx)
    if DEVICE.type == "cuda" and flags and flags[0] is not None:
        # Host synchronisations per step, by kind of step (steps 4-N; pass steps apart).
        for label, want in (("unsampled", False), ("sampled", True)):
            for who, runs in (("watched", watched), ("plain", plain)):
                idx = [
                    i
                    for i in range(3, steps)
                    if bool(flags[i]) is want and not diagnose_due(watched[0].numbers[i] or 0)
                ]
                if idx:
                    n = sum(r.syncs[i] for r in runs for i in idx)
                    out[f"host syncs per {label} step 4-N, {who} (cuda)"] = n / (
                        len(idx) * len(runs)
                    )
    # attach and close in wall time (close writes files: CPU time would leave the waits out)
    loop_w, loop_p = phase_sum(watched, 0, None), phase_sum(plain, 0, None)
    extra = sum(r.attach + r.close for r in watched) - sum(r.attach + r.close for r in plain)
    out["whole run incl. attach+close (wall)"] = (loop_w + extra) / loop_p
    # The extrapolation is in CPU time throughout: attach and close in CPU time too.
    extra_cpu = sum(r.attach_cpu + r.close_cpu for r in watched) - sum(
        r.attach_cpu + r.close_cpu for r in plain
    )
    share = pass_share = None
    if interleaved and make is Traindoctor:
        inter = interleave(shape, interleaved, True, out_dir, forced=forced)
        print(json.dumps(inter, default=str), flush=True)  # a long shape's first figures
        out.update(inter)
        share = inter.get("interleaved: unsampled share")
        pass_share = inter.get("interleaved: pass share")
        if gc_steps and share is not None:
            apart = gc_apart(shape_name, gc_steps, forced)
            out.update(apart)
            label = "interleaved: forced sampled steps"
            if forced and f"{label} (plain cpu s, no GC)" in inter:
                # The sampled step with the collector priced apart, as the unsampled share
                # below: interleaved CPU time less each side's GC, plus each side's GC alone.
                n = inter[f"{label} (pairs)"]
                gc_p = apart["gc apart: plain GC ms per forced step"] / 1e3
                gc_w = gc_p + apart["gc apart: extra GC ms per forced sampled step"] / 1e3
                out[f"{label} (cpu), GC apart"] = (
                    inter[f"{label} (watched cpu s, no GC)"] + n * gc_w
                ) / (inter[f"{label} (plain cpu s, no GC)"] + n * gc_p)
            plain_ms = inter["interleaved: unsampled steps 51-N: plain ms (median)"]
            share = inter["interleaved: unsampled share without GC"] + (
                apart["gc apart: extra GC ms per step"] / plain_ms
            )
            out["interleaved: unsampled share used (without GC, plus GC apart)"] = share
        if control:
            ctl = interleave(shape, interleaved, False, out_dir)
            print(json.dumps(ctl, default=str), flush=True)
            out.update(ctl)
    out.update(long_run(plain, watched, extra_cpu, share, pass_share))
    out["plain step ms (median, cpu)"] = statistics.median(t for r in plain for t in r.cpu) * 1e3
    out["plain ms steps 1-3 (cpu)"] = phase_sum(plain, 0, 3, "cpu") / len(plain) * 1e3
    out["watched ms steps 1-3 (cpu)"] = phase_sum(watched, 0, 3, "cpu") / len(watched) * 1e3
    out["attach s"] = statistics.fmean(r.attach for r in watched)
    out["close s"] = statistics.fmean(r.close for r in watched)
    out["close cpu s"] = statistics.fmean(r.close_cpu for r in watched)
    w0 = watched[0]
    out["handles at attach"] = w0.handles_attach
    out["handles steps 1-3"] = w0.handles_first3
    out["handles per step after 3"] = w0.handles_after / max(steps - 3, 1)
    out["bit-identical params"] = all(
        len(w.params) == len(p.params)
        and all(torch.equal(a, b) for a, b in zip(w.params, p.params, strict=True))
        for w, p in zip(watched, plain, strict=True)
    )
    if w0.interval is not None:
        out["sampling interval at end"] = w0.interval
        out["findings"] = w0.findings
    return out


class _GcClock:
    """CPU time in Python's cyclic collector since the last reset (a gc.callbacks entry)."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.spent += time.process_time() - self._start


def _calls_into_package(fn: Callable[[], Any]) -> int:
    """Python calls into traindoctor's own code while fn runs (counted with sys.setprofile)."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event == "call" and frame.f_code.co_filename.startswith(_PACKAGE):
            count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def _step_clock() -> float:
    """CPU time on the CPU (steadier on a shared machine); wall time on a GPU, whose work the
    process's CPU time does not see (each step is settled first)."""
    return time.perf_counter() if DEVICE.type == "cuda" else time.process_time()


def interleave(
    shape: Shape, steps: int, watched: bool, out_dir: str, after: int = 50, forced: int = 0
) -> dict[str, Any]:
    """Two copies of the run in one process, a plain step and a watched step in turn (the
    order alternating; both plain with watched=False, the control): CPU time per step of each
    side, told apart by the watched doctor's schedule read before the step (module
    docstring). Step `after` + 1 is not timed: its plain side runs under sys.setprofile, to
    count the calls into our code that the plain side makes. With `forced` > 0, `forced` more
    steps follow with every step sampled (the governor's interval pinned to 1): a run has a
    few sampled steps in its first hundreds, too few to price one against the noise."""
    sides = []
    for _ in range(2):
        torch.manual_seed(0)
        model = shape.build().to(DEVICE)
        sides.append((model, shape.optimizer(model)))
    g = torch.Generator().manual_seed(1)
    data = [_on_device(shape.data(g)) for _ in range(16)]
    doc = td.watch(*sides[1], out_dir=out_dir, console=False) if watched else None
    clock = _GcClock()
    gc.callbacks.append(clock)

    def one(side: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        model, opt = sides[side]
        d = doc if side == 1 else None
        clock.spent = 0.0
        _settle()
        c0 = _step_clock()
        opt.zero_grad(set_to_none=True)
        loss = shape.loss(model(x), y)
        if d is None:
            _BACKWARD(loss)
        else:
            loss.backward()
        opt.step()
        if d is not None:
            d.log(loss=loss)
        _settle()
        return _step_clock() - c0, clock.spent

    # kind -> [(plain s, watched s, plain gc s, watched gc s)]
    kinds: dict[str, list[tuple[float, float, float, float]]] = {
        "unsampled": [],
        "sampled": [],
        "pass": [],
        "forced sampled": [],
    }
    calls = -1
    try:
        for i in range(steps + (forced if doc is not None else 0)):
            x, y = data[i % len(data)]
            kind = "unsampled"
            if i >= steps:
                kind = "forced sampled"
                if i == steps:  # every step sampled from here (read by sampled() below)
                    budget = doc.budget
                    budget.interval = budget.min_interval = budget.max_interval = 1
                    budget.target = 1
                if diagnose_due(doc.step) or not doc.budget.sampled(doc.step):
                    kind = "forced, not counted"  # a pass step (or the pin did not hold)
            elif doc is not None:
                number = doc.step
                if diagnose_due(number):
                    kind = "pass"
                elif doc.budget.sampled(number):
                    kind = "sampled"
            if i == after:
                calls = _calls_into_package(lambda x=x, y=y: one(0, x, y))
                one(1, x, y)
                continue
            order = (0, 1) if i % 2 else (1, 0)
            t = {side: one(side, x, y) for side in order}
            if kind in kinds and (i > after or (kind == "sampled" and i >= 3)):
                kinds[kind].append((t[0][0], t[1][0], t[0][1], t[1][1]))

        objects = len(gc.get_objects())
    finally:
        gc.callbacks.remove(clock)
        if doc is not None:
            doc.close()
    tag = "interleaved" if watched else "control (plain / plain, interleaved)"
    out: dict[str, Any] = {}
    for kind, lo in (
        ("unsampled", after + 1),
        ("sampled", 4),
        ("pass", after + 1),
        ("forced sampled", steps + 1),
    ):
        pairs = kinds[kind]
        if not pairs or (kind != "unsampled" and not watched):
            continue
        plain_s = sum(p for p, *_ in pairs)
        watched_s = sum(w for _, w, *_ in pairs)
        label = f"{tag}: {kind} steps {lo}-N"
        out[f"{label} (cpu)"] = watched_s / plain_s
        out[f"{label}: steps"] = len(pairs)
        out[f"{label}: extra ms per step"] = (watched_s - plain_s) / len(pairs) * 1e3
        if kind == "forced sampled":
            out[f"{label}: median pair"] = statistics.median(w / p for p, w, *_ in pairs)
            out[f"{label}: pairs over 1.3x"] = sum(w > 1.3 * p for p, w, *_ in pairs)
            # Without the collector on either side (a full collection walks both models and
            # falls on one side: ~0.5 s on the 10,000-tensor model), for gc_apart's figure.
            out[f"{tag}: forced sampled steps (plain cpu s, no GC)"] = plain_s - sum(
                a for *_, a, _ in pairs
            )
            out[f"{tag}: forced sampled steps (watched cpu s, no GC)"] = watched_s - sum(
                b for *_, b in pairs
            )
            out[f"{tag}: forced sampled steps (pairs)"] = len(pairs)
            out[f"{label}: without GC (cpu)"] = (
                out[f"{tag}: forced sampled steps (watched cpu s, no GC)"]
                / out[f"{tag}: forced sampled steps (plain cpu s, no GC)"]
            )
        if kind == "unsampled":
            out[f"{label}: median pair"] = statistics.median(w / p for p, w, *_ in pairs)
            out[f"{label}: plain ms (median)"] = statistics.median(p for p, *_ in pairs) * 1e3
            gc_p = sum(a for *_, a, _ in pairs) / len(pairs) * 1e3
            gc_w = sum(b for *_, b in pairs) / len(pairs) * 1e3
            other = "watched" if watched else "plain"
            out[f"{tag}: GC ms per unsampled step, plain / {other} side"] = (
                f"{gc_p:.1f} / {gc_w:.1f}"
            )
            # The collector's time left out on both sides: interleaved, which side a
            # collection of both models' objects falls on is placement, not cost (gc_apart).
            out[f"{tag}: unsampled share without GC"] = (
                (watched_s - plain_s) / len(pairs) - (gc_w - gc_p) / 1e3
            ) / (plain_s / len(pairs))
        out[f"{tag}: {kind} share"] = (watched_s - plain_s) / plain_s
    out[f"{tag}: calls into traindoctor on a plain step"] = calls
    out[f"{tag}: objects tracked by the collector"] = objects
    out[f"{tag}: params bit-identical"] = all(
        torch.equal(a, b)
        for a, b in zip(sides[0][0].parameters(), sides[1][0].parameters(), strict=True)
    )
    return out


def gc_side(
    shape_name: str, steps: int, watched: bool, out_dir: str, forced: int = 0
) -> dict[str, Any]:
    """One side of gc_apart, in this (fresh) process: the collector's CPU time and its
    collections per step over steps 51-(50 + steps), with only this side's model alive; with
    `forced`, the same over `forced` more steps, every one sampled on the watched side (the
    governor's interval pinned to 1, as interleave's forced steps)."""
    shape = SHAPES[shape_name]
    torch.manual_seed(0)
    model = shape.build().to(DEVICE)
    opt = shape.optimizer(model)
    g = torch.Generator().manual_seed(1)
    data = [_on_device(shape.data(g)) for _ in range(16)]
    doc = td.watch(model, opt, out_dir=out_dir, console=False) if watched else None
    clock = _GcClock()
    counts = [0, 0, 0]

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            counts[info["generation"]] += 1

    unsampled_ms = 0.0
    pinned = 0
    for i in range(50 + steps + forced):
        if i == 50:
            gc.callbacks.extend((clock, count))
        if i == 50 + steps:
            unsampled_ms, clock.spent = clock.spent / steps * 1e3, 0.0
            if doc is not None:
                budget = doc.budget
                budget.interval = budget.min_interval = budget.max_interval = 1
                budget.target = 1
        if i >= 50 + steps and doc is not None:
            pinned += bool(doc.budget.sampled(doc.step) and not diagnose_due(doc.step))
        x, y = data[i % len(data)]
        opt.zero_grad(set_to_none=True)
        loss = shape.loss(model(x), y)
        loss.backward()
        opt.step()
        if doc is not None:
            doc.log(loss=loss)
    gc.callbacks.remove(clock)
    gc.callbacks.remove(count)
    if not forced:
        unsampled_ms = clock.spent / steps * 1e3
    out = {"gc_ms_per_step": unsampled_ms, "collections": counts}
    if forced:
        # (a pass step among them is priced as a sampled one: a few in `forced` at most)
        out["gc_ms_per_forced_step"] = clock.spent / forced * 1e3
        out["forced_sampled"] = pinned
    out["objects"] = len(gc.get_objects())
    if doc is not None:
        doc.close()
    return out


def gc_apart(shape_name: str, steps: int, forced: int = 0) -> dict[str, Any]:
    """The collector's cost of traindoctor, each side in a fresh process of its own (the
    interleaved run holds both models: its full collections walk both sides' objects, and
    fall on whichever side allocates past the threshold). Steps 51-(50 + steps) of a plain
    run and of a watched one; the extra GC ms per step is watched - plain."""
    sides = {}
    for side in ("plain", "watched"):
        cmd = [sys.executable, __file__, "--gc-side", side, "--shapes", shape_name]
        cmd += ["--gc-apart", str(steps), "--device", str(DEVICE)]
        cmd += ["--forced-sampled", str(forced)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        sides[side] = json.loads(done.stdout.strip().splitlines()[-1])
    p, w = sides["plain"], sides["watched"]
    return {
        "gc apart: steps": steps,
        "gc apart: GC ms per step, plain / watched": (
            f"{p['gc_ms_per_step']:.1f} / {w['gc_ms_per_step']:.1f}"
        ),
        "gc apart: collections gen 0/1/2, plain / watched": f"{p['collections']} / "
        f"{w['collections']}",
        "gc apart: objects tracked, plain / watched": f"{p['objects']} / {w['objects']}",
        "gc apart: extra GC ms per step": w["gc_ms_per_step"] - p["gc_ms_per_step"],
    } | (
        {
            "gc apart: GC ms per forced sampled step, plain / watched": (
                f"{p['gc_ms_per_forced_step']:.1f} / {w['gc_ms_per_forced_step']:.1f}"
            ),
            "gc apart: forced steps sampled (watched)": f"{w['forced_sampled']} of {forced}",
            "gc apart: plain GC ms per forced step": p["gc_ms_per_forced_step"],
            "gc apart: extra GC ms per forced sampled step": w["gc_ms_per_forced_step"]
            - p["gc_ms_per_forced_step"],
        }
        if forced
        else {}
    )


LONG_RUNS = (10_000, 100_000)


def long_run(
    plain: list[Run],
    watched: list[Run],
    attach_close: float,
    share: float | None = None,
    pass_share: float | None = None,
) -> dict[str, Any]:
    """The whole-run ratio extrapolated to LONG_RUNS steps from the measured phases (CPU
    time; the module docstring says how). `share` / `pass_share`: the unsampled / pass
    steps' extra as a share of the plain step, measured interleaved; they replace the
    sequential runs' e_u / e_p (still reported: one or two pass steps measured sequentially
    are within that method's noise). Empty when the runs are too short to have a steady
    state, or nothing samples."""
    steps = len(plain[0].cpu)
    w0 = watched[0]
    flags, numbers = w0.sampled, w0.numbers
    if steps <= 55 or not flags or flags[0] is None or numbers[0] is None:
        return {}
    n = len(plain)

    def extra(idx: list[int]) -> float:
        return sum(w.cpu[i] - p.cpu[i] for w, p in zip(watched, plain, strict=True) for i in idx)

    head = list(range(50))
    one_off = (extra(head) + attach_close) / n
    head_p = sum(p.cpu[i] for p in plain for i in head) / n
    steady = range(50, steps)
    per_p = sum(p.cpu[i] for p in plain for i in steady) / (n * len(steady))
    passes = [i for i in steady if diagnose_due(numbers[i])]
    rest = [i for i in steady if not diagnose_due(numbers[i])]
    unsampled = [i for i in rest if not flags[i]]
    sampled = [i for i in rest if flags[i]] or [i for i in range(3, 50) if flags[i]]
    if not unsampled or not sampled:
        return {}
    e_u_seq = extra(unsampled) / (n * len(unsampled))
    e_u = e_u_seq if share is None else share * per_p
    e_s = extra(sampled) / (n * len(sampled))
    # No due step in 51-M (a short window): the passes are not measured, and are priced as
    # the steps they fall on (the figure leaves them out, and says so).
    e_p_seq = extra(passes) / (n * len(passes)) if passes else None
    e_p = e_p_seq if pass_share is None or e_p_seq is None else pass_share * per_p
    interval = w0.target or w0.interval or 1
    rate = 1 / interval
    method = "sequential" if share is None else "interleaved"
    out: dict[str, Any] = {
        "long run: one-off extra s (steps 1-50 + attach/close; sequential)": one_off,
        f"long run: extra ms per unsampled step ({method})": e_u * 1e3,  # share x plain step
        "long run: extra ms per sampled step (sequential)": e_s * 1e3,
        "long run: extra ms per pass step (sequential)": (
            "not measured" if e_p_seq is None else e_p_seq * 1e3
        ),
        "long run: plain ms per step (sequential)": per_p * 1e3,
        "long run: steady interval": interval,
    }
    if share is not None:
        out["long run: extra ms per unsampled step (sequential; not used)"] = e_u_seq * 1e3
    if e_p is not None and e_p is not e_p_seq:
        out["long run: extra ms per pass step (interleaved; used)"] = e_p * 1e3
    terms = "all terms sequential"
    if share is not None:
        terms = "e_u, e_p interleaved" if e_p is not e_p_seq else "e_u interleaved"
    first = numbers[50]
    for big in LONG_RUNS:
        n_p = (
            0 if e_p is None else sum(1 for s in range(first, first + big - 50) if diagnose_due(s))
        )
        other = big - 50 - n_p
        out[f"long run ratio at {big:.0e} steps (extrapolated, cpu; {terms})"] = 1 + (
            one_off + n_p * (e_p or 0.0) + other * (rate * e_s + (1 - rate) * e_u)
        ) / (head_p + (big - 50) * per_p)
    return out


def describe(model: nn.Module) -> str:
    params = list(model.parameters())
    return f"{sum(p.numel() for p in params):,} params in {len(params):,} tensors"


def rows(results: dict[str, dict[str, Any]]) -> Iterator[str]:
    keys: list[str] = []
    for res in results.values():
        keys += [k for k in res if k not in keys and k not in ("params",)]
    names = list(results)
    yield "| | " + " | ".join(names) + " |"
    yield "|---|" + "---|" * len(names)
    for k in keys:
        cells = []
        for n in names:
            v = results[n].get(k, "")
            if isinstance(v, float):
                v = f"{v:.3f}" if math.isfinite(v) else str(v)
            elif isinstance(v, list):
                v = ",".join(v) or "-"
            cells.append(str(v))
        yield f"| {k} | " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="60 steps, 1 round: a smoke check")
    ap.add_argument(
        "--shapes", default=",".join(SHAPES), help="comma-separated: " + ",".join(SHAPES)
    )
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2, help="plain/watched pairs per shape")
    ap.add_argument("--no-peers", action="store_true", help="skip detect_anomaly and wandb")
    ap.add_argument(
        "--interleaved",
        type=int,
        default=None,
        metavar="STEPS",
        help="steps of the interleaved run per shape (default: --steps; 0: none)",
    )
    ap.add_argument(
        "--control", action="store_true", help="also interleave plain / plain: the method's error"
    )
    ap.add_argument(
        "--forced-sampled",
        type=int,
        default=0,
        metavar="STEPS",
        help="after the interleaved run, this many more interleaved steps, every one sampled",
    )
    ap.add_argument(
        "--first-steps",
        type=int,
        default=0,
        metavar="PAIRS",
        help="after each shape, this many alternated fresh plain/watched 3-step runs (steps\n"
        "1-3 apart from the run order, after one thrown-away pair)",
    )
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda where a GPU is lent (wall time; host syncs per step counted)",
    )
    ap.add_argument(
        "--gc-apart",
        type=int,
        default=0,
        metavar="STEPS",
        help="price the collector apart: a plain and a watched run of 50 + STEPS steps, each\n"
        "in a fresh process; the long-run figure then takes the interleaved unsampled extra\n"
        "without GC, plus this extra GC per step",
    )
    ap.add_argument("--gc-side", choices=("plain", "watched"), help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds = 60, 1
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    if args.interleaved is None:
        args.interleaved = args.steps
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # detect_anomaly warns once per run
    if args.gc_side:
        with tempfile.TemporaryDirectory() as out:
            side = gc_side(
                args.shapes, args.gc_apart, args.gc_side == "watched", out, args.forced_sampled
            )
        print(json.dumps(side))
        return
    shapes = [s for s in args.shapes.split(",") if s]
    results: dict[str, dict[str, Any]] = {}
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"
    print(f"load: {os.getloadavg()}; torch {torch.__version__}, 1 thread; device: {where}")
    if DEVICE.type == "cuda":
        print("on CUDA read the (wall) ratios and the interleaved figures (wall there); the")
        print("long-run extrapolation and the (cpu) ratios are the host's CPU time only")
    with tempfile.TemporaryDirectory() as out:
        run(SHAPES["mlp"], 10, Watcher(), out)  # warm-up: allocator, kernels
        for name in shapes:
            shape = SHAPES[name]
            t0 = time.perf_counter()
            res = {"params": describe(shape.build())}
            res.update(
                compare(
                    shape,
                    args.steps,
                    args.rounds,
                    Traindoctor,
                    out,
                    args.interleaved,
                    args.control,
                    args.forced_sampled,
                    args.gc_apart,
                    name,
                )
            )
            if args.first_steps:
                res.update(first_steps(shape, args.first_steps, out))
            results[name] = res
            print(f"{name}: {res['params']}, done in {time.perf_counter() - t0:.0f} s")
            print(json.dumps(res, default=str))
        peers: dict[str, dict[str, Any]] = {}
        if not args.no_peers:
            peers["gpt: detect_anomaly"] = compare(
                SHAPES["gpt"], args.steps, args.rounds, DetectAnomaly, out
            )
            try:
                import wandb  # noqa: F401

                peers["gpt: wandb.watch"] = compare(
                    SHAPES["gpt"], args.steps, args.rounds, WandbWatch, out
                )
            except ImportError:
                peers["gpt: wandb.watch"] = {"note": "wandb is not installed: skipped"}
            if "gpt" in results:
                peers = {"gpt: traindoctor": results["gpt"], **peers}
            for name, res in peers.items():
                print(name, json.dumps(res, default=str))
    print(f"load after: {os.getloadavg()}")
    print("\n".join(rows(results)))
    if peers:
        print()
        print("\n".join(rows(peers)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"shapes": results, "peers": peers}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
