"""A torch.compile'd model with and without traindoctor: graph breaks, unique graphs, and the
step-time ratio, side by side in one process with one thread.

The model (an 8-layer MLP, as in issue 13's report) is compiled with inductor, trained plainly
and watched in alternating blocks after a warm-up that compiles each variant; dynamo's own
counters give the graph breaks and the graphs compiled per variant.
Usage: OMP_NUM_THREADS=1 python bench/compiled_overhead.py [--steps 200] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn as nn
from torch._dynamo.utils import counters

import traindoctor as td


def make_model(width: int = 256, depth: int = 8) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def run(steps: int, watched: bool, out_dir: str) -> tuple[list[float], int, int]:
    torch._dynamo.reset()
    counters.clear()
    model = make_model()
    compiled = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(8)
    ]
    doc = td.watch(model, opt, out_dir=out_dir, console=False) if watched else None
    times = []
    for i in range(steps):
        x, y = data[i % len(data)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(compiled(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    if doc is not None:
        doc.close()
    return times, sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain: list[float] = []
    watched: list[float] = []
    figures = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for _ in range(args.rounds):
            for is_watched, into in ((False, plain), (True, watched)):
                times, breaks, graphs = run(args.steps, is_watched, out_dir)
                into.extend(times[20:])  # after compiling and the structural steps
                figures[is_watched] = (breaks, graphs)
    ratio = statistics.median(watched) / statistics.median(plain)
    mean_ratio = statistics.mean(watched) / statistics.mean(plain)
    print(f"plain:   graph breaks {figures[False][0]}, unique graphs {figures[False][1]}")
    print(f"watched: graph breaks {figures[True][0]}, unique graphs {figures[True][1]}")
    print(
        f"step time plain {statistics.median(plain) * 1e3:.2f} ms, watched "
        f"{statistics.median(watched) * 1e3:.2f} ms: ratio median {ratio:.3f}, mean {mean_ratio:.3f}"
    )


if __name__ == "__main__":
    main()
