"""Calibration of the sampling schedule's cost model (src/traindoctor/budget.py).

The schedule is decided from counted work, never from timing, so that two runs of a script
sample the same steps. Its constants (seconds per module call, per parameter tensor, per
element; FLOPs per second of the user's step) come from here: for a few models of different
shapes, it measures the user's step time plainly, and traindoctor's own time on sampled and
unsampled steps with the interval held fixed, and prints them next to the cost model's
predictions for the work counted on the same run. Run with one thread, on an idle machine:

    OMP_NUM_THREADS=1 python bench/schedule_calibration.py [--steps 120]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn as nn

import traindoctor as td
from traindoctor.budget import predicted_sampled_seconds, predicted_step_seconds


def mlp(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


class SmallCNN(nn.Module):
    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1, stride=2),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1, stride=2),
            nn.BatchNorm2d(4 * c),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(4 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 256, dim: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        block = nn.TransformerEncoderLayer(dim, 4, 4 * dim, batch_first=True, dropout=0.0)
        self.body = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.emb(x)))


CASES = {
    "mlp-tiny (3 layers x 32, batch 16)": (lambda: mlp(32, 2), (16, 32), 10),
    "mlp-bench (16 x 256, batch 64)": (lambda: mlp(256, 16), (64, 256), 10),
    "mlp-wide (4 x 1024, batch 128)": (lambda: mlp(1024, 4), (128, 1024), 10),
    "cnn (3 convs, 32x32, batch 32)": (SmallCNN, (32, 3, 32, 32), 10),
    "transformer (2 layers, 64 tokens, batch 8)": (TinyLM, (8, 64), 256),
}


def _batch(shape: tuple[int, ...], classes: int, g: torch.Generator):
    if len(shape) == 2 and classes == 256:  # token ids in, next-token targets out
        x = torch.randint(0, 256, shape, generator=g)
        return x, torch.randint(0, 256, shape, generator=g)
    return torch.randn(*shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g)


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def run(make, shape, classes, steps: int, watched: bool, out_dir: str):
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    batches = [_batch(shape, classes, g) for _ in range(8)]
    doc = td.watch(model, opt, out_dir=out_dir, console=False) if watched else None
    per_step: list[tuple[int, float]] = []
    if doc is not None:
        doc.budget.adaptive = False  # the interval stays 10: sampled and unsampled steps both
        original = doc.budget.step_end

        def step_end(step: int) -> None:
            per_step.append((step, doc.budget.step_spent))
            original(step)

        doc.budget.step_end = step_end
    times = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    work = None
    if doc is not None:
        work = doc.budget.work
        interval = doc.budget.interval
        doc.close()
        sampled = [s for st, s in per_step if st > 10 and st % interval == 0]
        plain = [s for st, s in per_step if st > 10 and st % interval]
        return times, work, statistics.median(sampled), statistics.median(plain)
    return times, work, 0.0, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':44} {'step ms':>8} {'pred':>7} {'extra ms':>9} {'pred':>7} {'floor ms':>9}")
    with tempfile.TemporaryDirectory() as out_dir:
        for name, (make, shape, classes) in CASES.items():
            plain, _, _, _ = run(make, shape, classes, args.steps, False, out_dir)
            _, work, sampled, floor = run(make, shape, classes, args.steps, True, out_dir)
            step_ms = statistics.median(plain[10:]) * 1e3
            pred_step = predicted_step_seconds(work) * 1e3 if work else float("nan")
            extra_ms = (sampled - floor) * 1e3
            pred_extra = predicted_sampled_seconds(work) * 1e3 if work else float("nan")
            print(
                f"{name:44} {step_ms:8.2f} {pred_step:7.2f} {extra_ms:9.2f} {pred_extra:7.2f} "
                f"{floor * 1e3:9.3f}   {work}"
            )


if __name__ == "__main__":
    main()
