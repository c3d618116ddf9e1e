"""Overhead of `traindoctor.transformers.Doctor()` on a Hugging Face Trainer, as a ratio.

Trains a randomly initialised GPT-2 (4 layers, hidden 128, vocab 512, ~0.9M parameters;
nothing downloaded) on CPU with `Trainer`, plain and with the callback, in alternating rounds
in one process (plain, watched, plain, watched, ...), at default settings (default
TrainingArguments logging; the callback's defaults). Prints the median and mean per-step time
ratios (on_step_begin -> on_step_end, which holds forward, backward, clipping and the
optimizer step, where the Doctor's hooks run) and the ratio of whole `train()` calls (which
also hold the Doctor's attach and its final diagnosis and report).

Usage: python bench/transformers_overhead.py [--steps 100] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from traindoctor.transformers import Doctor

VOCAB, SEQ = 512, 64


class Tokens(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, as the Trainer brackets it."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.times.append(time.perf_counter() - self._t0)


def run(steps: int, watched: bool, out_dir: str) -> tuple[list[float], float]:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=128, n_layer=4, n_head=4)
    )
    args = TrainingArguments(
        output_dir=os.path.join(out_dir, "hf"),
        max_steps=steps,
        per_device_train_batch_size=8,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    timer = StepTimer()
    callbacks: list[TrainerCallback] = [timer]
    doctor = Doctor(out_dir=os.path.join(out_dir, "runs"), console=False) if watched else None
    if doctor is not None:
        callbacks.append(doctor)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(256), callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    if doctor is not None and doctor.doctor is not None:
        SPENT.append(doctor.doctor.budget.spent / sum(timer.times))
    return timer.times, total


SPENT: list[float] = []  # time the Doctor measured inside its own hooks / step time, per run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    opts = ap.parse_args()
    torch.set_num_threads(opts.threads)
    hf_logging.set_verbosity_error()
    plain_steps: list[float] = []
    watched_steps: list[float] = []
    plain_total: list[float] = []
    watched_total: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        run(10, False, tmp)  # warm-up: allocator, thread pools, lazy imports
        run(10, True, tmp)
        for _ in range(opts.rounds):
            times, total = run(opts.steps, False, tmp)
            plain_steps += times[5:]
            plain_total.append(total)
            times, total = run(opts.steps, True, tmp)
            watched_steps += times[5:]
            watched_total.append(total)
    med = statistics.median(watched_steps) / statistics.median(plain_steps)
    mean = statistics.fmean(watched_steps) / statistics.fmean(plain_steps)
    total = statistics.median(watched_total) / statistics.median(plain_total)
    print(
        f"GPT-2 4x128, {opts.steps} steps x {opts.rounds} rounds, {opts.threads} threads: "
        f"plain step median {statistics.median(plain_steps) * 1e3:.1f} ms"
    )
    print(f"step time ratio, watched / plain: median {med:.3f}, mean {mean:.3f}")
    print(f"time inside traindoctor's hooks, as it measures it: {statistics.median(SPENT):.3%}")
    print(f"whole train() ratio (attach, steps, final diagnosis and report): {total:.3f}")


if __name__ == "__main__":
    main()
