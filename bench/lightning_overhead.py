"""Overhead of `traindoctor.lightning.Doctor()` at default settings, against the same Trainer
run without it, in one process.

Trains the MLP of bench/overhead.py (~1.06M parameters in 36 tensors) with a Lightning
Trainer on CPU for N steps per run, plain and with the callback, in alternating rounds, and
prints the median step-time ratio (step = on_train_batch_start -> on_train_batch_end, which
holds training_step, backward and the optimizer step) and the whole-fit wall-time ratio
(includes the doctor's attach, its final diagnosis and writing the report).
Usage: python bench/lightning_overhead.py [--steps 200] [--rounds 6]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as L
import torch
import torch.nn as nn

import traindoctor.lightning as tdl

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


class MLP(L.LightningModule):
    def __init__(self, width: int = 256, depth: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.GELU()]
        layers += [nn.LayerNorm(width), nn.Linear(width, 10)]
        self.net = nn.Sequential(*layers)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.times.append(time.perf_counter() - self._t0)


def run(steps: int, watched: bool, out_dir: str) -> tuple[list[float], float]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16 * 64, 256, generator=g), torch.randint(0, 10, (16 * 64,), generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    timer = StepTimer()
    callbacks: list[L.Callback] = [timer]
    if watched:
        callbacks.append(tdl.Doctor(out_dir=out_dir, console=False))
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    t0 = time.perf_counter()
    trainer.fit(MLP(), data)
    return timer.times, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = steadier timings)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    step_ratios, fit_ratios = [], []
    plain_all: list[float] = []
    watched_all: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        run(20, False, out)  # warm-up: imports, allocator, kernels
        run(20, True, out)
        for i in range(args.rounds):
            # Alternate which goes first so that drift in machine speed cancels out.
            order = (True, False) if i % 2 else (False, True)
            results = {w: run(args.steps, w, out) for w in order}
            (p, p_fit), (w, w_fit) = results[False], results[True]
            plain_all += p
            watched_all += w
            step_ratios.append(statistics.median(w) / statistics.median(p))
            fit_ratios.append(w_fit / p_fit)
    print(f"Lightning {L.__version__}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"{args.steps} steps x {args.rounds} rounds, MLP 1.06M params in 36 tensors, AdamW")
    print(
        f"plain    median step {statistics.median(plain_all) * 1e3:.3f} ms, "
        f"mean {statistics.fmean(plain_all) * 1e3:.3f} ms"
    )
    print(
        f"callback median step {statistics.median(watched_all) * 1e3:.3f} ms, "
        f"mean {statistics.fmean(watched_all) * 1e3:.3f} ms"
    )
    print(
        f"overhead ratio (median step time, median over rounds): {statistics.median(step_ratios):.3f}"
    )
    print("per-round ratios: " + ", ".join(f"{r:.3f}" for r in step_ratios))
    print(
        "overhead ratio (mean step time, includes structural and sampled steps): "
        f"{statistics.fmean(watched_all) / statistics.fmean(plain_all):.3f}"
    )
    print(
        "whole fit wall time ratio (attach, final diagnosis, report): "
        f"{statistics.median(fit_ratios):.3f}"
    )


if __name__ == "__main__":
    main()
