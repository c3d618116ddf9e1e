"""Overhead of traindoctor at default settings, as a ratio against the same run without it.

Trains an MLP of ~1.06M parameters in 36 tensors on CPU for 200 steps, plain and watched, in
alternating blocks in one process (plain, watched, plain, watched, ...), and prints the
median and mean step-time ratios. 200-step runs weigh the first steps heavily (the
structural checks of steps 1-3, the data probe's per-sample fingerprints of the first 32), so
a long watched run then reports the steady state as the governor sees it: the share of step
time spent in traindoctor's hooks per 20-step window, and the sampling interval it settled on.
`--calls` prints instead the load-independent figure of issue 15: the Python calls (function
and builtin calls, `sys.setprofile`) of one unsampled step after step 60, median over 200
steps, plain and watched; run it on an export of another commit (PYTHONPATH=<export>/src) for
a before/after. `--entries` prints the other load-independent figure: the places where
traindoctor's code runs on an unsampled step (each call from torch's or the user's code into
the package: a module hook, an optimizer hook, a patched function, doc.log), per entry point,
per step. In situ each entry costs more than its calls (the first code to run after one of
torch's heavy phases finds a cold cache), so fewer entries is the lever calls are not.
`--interleaved` times unsampled steps against plain ones step by step: two copies of the
same run in one process, a plain step and a watched step in turn (the order alternating), so
that the machine's load, which moves by the second, weighs on both sides alike; the plain side
calls the unpatched torch.autograd.backward (saved at import, before any attach), so that the
watched doctor does not see its backward passes. With `--control` both sides are plain: the
method's own error (0.998-1.010 over 240 steps at load 14-20 on this 2-core machine, where
run-by-run alternation moved by several points).
Usage: python bench/overhead.py [--steps 200] [--rounds 12] [--long 1500] [--calls] [--entries]
    [--interleaved [--control]]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn

import traindoctor as td

# Saved before any attach: the plain side of --interleaved runs backward without our patches.
_BACKWARD = torch.autograd.backward


def make_model(width: int = 256, depth: int = 16) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers += [nn.LayerNorm(width), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


SPENT: list[float] = []  # seconds measured inside traindoctor's own hooks, per watched run


def run(steps: int, watched: bool, out_dir: str) -> list[float]:
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(16)
    ]
    doc = td.watch(model, opt, out_dir=out_dir, console=False) if watched else None
    times = []
    for i in range(steps):
        x, y = data[i % len(data)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if doc is not None:
            doc.log(loss=loss)
        times.append(time.perf_counter() - t0)
    if doc is not None:
        SPENT.append(doc.budget.spent / sum(times))
        doc.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = steadier timings)")
    ap.add_argument(
        "--long", type=int, default=1500, help="steps of the steady-state run (0: skip)"
    )
    ap.add_argument("--calls", action="store_true", help="count Python calls per unsampled step")
    ap.add_argument(
        "--entries", action="store_true", help="list the entries into traindoctor per step"
    )
    ap.add_argument(
        "--interleaved", action="store_true", help="plain and watched steps in turn, one process"
    )
    ap.add_argument("--control", action="store_true", help="--interleaved, both sides plain")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.interleaved:
        interleaved(max(args.steps, 300), watched=not args.control)
        return
    if args.entries:
        count_entries()
        return
    if args.calls:
        plain_calls, watched_calls = count_calls(False), count_calls(True)
        print(
            f"Python calls per unsampled step (median of steps 61-260): plain {plain_calls:.0f}, "
            f"watched {watched_calls:.0f}, traindoctor's {watched_calls - plain_calls:.0f}"
        )
        return
    model = make_model()
    n_params = sum(p.numel() for p in model.parameters())
    n_tensors = len(list(model.parameters()))
    plain: list[float] = []
    watched: list[float] = []
    pair_ratios: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        run(20, False, out)  # warm-up: allocator, kernels
        for i in range(args.rounds):
            # Alternate which goes first so that drift in machine speed cancels out.
            if i % 2:
                w = run(args.steps, True, out)
                p = run(args.steps, False, out)
            else:
                p = run(args.steps, False, out)
                w = run(args.steps, True, out)
            plain += p
            watched += w
            pair_ratios.append(statistics.median(w) / statistics.median(p))
    med = statistics.median(pair_ratios)
    mean = statistics.fmean(watched) / statistics.fmean(plain)
    print(
        f"model: {n_params:,} params in {n_tensors} tensors; {args.steps} steps x {args.rounds} rounds"
    )
    print(
        f"plain   median step {statistics.median(plain) * 1e3:.3f} ms, mean {statistics.fmean(plain) * 1e3:.3f} ms"
    )
    print(
        f"watched median step {statistics.median(watched) * 1e3:.3f} ms, mean {statistics.fmean(watched) * 1e3:.3f} ms"
    )
    print(f"overhead ratio (median step time, median over rounds): {med:.3f}")
    print("per-round ratios: " + ", ".join(f"{r:.3f}" for r in pair_ratios))
    print(f"overhead ratio (mean step time, includes sampled and structural steps): {mean:.3f}")
    print(
        f"time inside traindoctor's hooks, self-measured: {statistics.fmean(SPENT):.2%} of step time"
    )
    if args.long:
        steady(args.long)


def count_calls(watched: bool, steps: int = 260, after: int = 60) -> float:
    """Median Python calls of an unsampled step (neither a read-back nor a pass step)."""
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(16)
    ]
    counted = [0]

    def profile(_frame, event, _arg):
        if event == "call" or event == "c_call":
            counted[0] += 1

    per_step: list[int] = []
    with tempfile.TemporaryDirectory() as out:
        doc = td.watch(model, opt, out_dir=out, console=False) if watched else None
        for i in range(steps):
            x, y = data[i % len(data)]
            on = i >= after and (doc is None or not doc.budget.sampled(doc.step))
            counted[0] = 0
            if on:
                sys.setprofile(profile)
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if doc is not None:
                doc.log(loss=loss)
            sys.setprofile(None)
            if on:
                per_step.append(counted[0])
        if doc is not None:
            doc.close()
    return statistics.median(per_step)


def count_entries(steps: int = 260, after: int = 60) -> None:
    """Each call into the package from outside it (its caller's frame is not the package's), on
    unsampled steps after `after` that are neither read-back nor pass steps: per entry point."""
    import collections
    import os

    package = os.path.dirname(td.__file__)
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(16)
    ]
    entries: collections.Counter[str] = collections.Counter()
    per_step: list[int] = []
    n = [0]

    def profile(frame, event, _arg):
        if event != "call" or not frame.f_code.co_filename.startswith(package):
            return
        back = frame.f_back
        if back is None or not back.f_code.co_filename.startswith(package):
            code = frame.f_code
            where = os.path.relpath(code.co_filename, package)
            entries[f"{where}:{code.co_firstlineno} {code.co_qualname}"] += 1
            n[0] += 1

    with tempfile.TemporaryDirectory() as out:
        doc = td.watch(model, opt, out_dir=out, console=False)
        for i in range(steps):
            x, y = data[i % len(data)]
            # Neither sampled, nor a read-back step (every 25th), nor one a pass may run at.
            on = i >= after and not doc.budget.sampled(doc.step) and doc.step % 25 != 0
            n[0] = 0
            if on:
                sys.setprofile(profile)
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            doc.log(loss=loss)
            sys.setprofile(None)
            if on:
                per_step.append(n[0])
        doc.close()
    print(
        f"entries into traindoctor per unsampled step: median {statistics.median(per_step):.0f}"
        f" (min {min(per_step)}, max {max(per_step)}, {len(per_step)} steps)"
    )
    for where, count in entries.most_common():
        print(f"  {count / len(per_step):5.2f}  {where}")


def interleaved(steps: int, watched: bool = True, after: int = 60) -> None:
    """CPU time of each unsampled step after `after`, watched and plain in turn (docstring)."""
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(16)
    ]
    sides = []
    for _ in range(2):
        torch.manual_seed(0)
        model = make_model()
        sides.append((model, torch.optim.AdamW(model.parameters(), lr=1e-3)))
    plain_t: list[float] = []
    watched_t: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        m, o = sides[1]
        doc = td.watch(m, o, out_dir=out, console=False) if watched else None

        def one(side: int, x: torch.Tensor, y: torch.Tensor) -> float:
            model, opt = sides[side]
            d = doc if side == 1 else None
            c0 = time.process_time()
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            if d is None:
                _BACKWARD(loss)
            else:
                loss.backward()
            opt.step()
            if d is not None:
                d.log(loss=loss)
            return time.process_time() - c0

        for i in range(steps):
            x, y = data[i % len(data)]
            sampled = doc is not None and doc.budget.sampled(doc.step)
            order = (0, 1) if i % 2 else (1, 0)
            t = {side: one(side, x, y) for side in order}
            if i >= after and not sampled:
                plain_t.append(t[0])
                watched_t.append(t[1])
        if doc is not None:
            doc.close()
    pairs = [w / p for w, p in zip(watched_t, plain_t, strict=True)]
    print(
        f"{'watched' if watched else 'control (both plain)'} / plain, unsampled steps "
        f"{after + 1}-{steps} ({len(pairs)}): ratio of sums "
        f"{sum(watched_t) / sum(plain_t):.4f}, median pair {statistics.median(pairs):.4f}; "
        f"plain median {statistics.median(plain_t) * 1e3:.3f} ms, extra per step "
        f"{(sum(watched_t) - sum(plain_t)) / len(pairs) * 1e3:.3f} ms (cpu)"
    )


def steady(steps: int) -> None:
    """One long watched run: the governor's per-window shares after the first 200 steps."""
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(16)
    ]
    with tempfile.TemporaryDirectory() as out:
        doc = td.watch(model, opt, out_dir=out, console=False)
        for i in range(steps):
            x, y = data[i % len(data)]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            doc.log(loss=loss)
        windows = [(s, r, i) for s, r, i in doc.budget.history if s > 200]
        doc.close()
    if not windows:
        return
    shares = [r for _, r, _ in windows]
    print(
        f"steady state ({steps} steps, windows after step 200): share of step time in hooks "
        f"median {statistics.median(shares):.2%}, last {shares[-1]:.2%}; "
        f"sampling interval {windows[-1][2]} steps"
    )


if __name__ == "__main__":
    main()
