"""Experiments on a copy (issue 17): prove a diagnosis instead of guessing it.

Under `traindoctor check` (or with `TRAINDOCTOR_EXPERIMENTS=1` in the environment, any mode),
the capture probe (probes/capture.py) keeps one training batch as the script fed it (the
model's inputs, the standard loss function called on the model's output, its target and
options), the model's initial weights and the optimizer's class and hyper-parameters. At close,
after every hook is detached, Karpathy's recipe runs on a deep copy (recipe.py):

- the loss at initialization against its expected value (cross-entropy: ln C);
- overfit one batch: K steps of the user's optimizer class on the one batch, at the user's lr
  and, when that does not fit, at x10 and x0.1;
- the input-independent baseline: the same training with the inputs zeroed;
- batch independence: d output[i] / d input[j], j != i, BatchNorm and Dropout in eval mode on
  the copy; a non-zero one names the autograd op that mixes the batch.

Each result is an `experiment` event; the TD7xx rules word them. The copy, its RNG
(`torch.random.fork_rng`, CUDA included) and its optimizer are separate: the user's parameters,
gradients, optimizer state, RNG streams and data loader are bit-identical to a run without the
experiments (tests/experiments/test_isolation.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

ENV = "TRAINDOCTOR_EXPERIMENTS"
_forced: list[bool] = []


def enabled() -> bool:
    """Whether the doctors attached now capture a batch and run the experiments at close."""
    if _forced:
        return _forced[-1]
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def enable(on: bool = True) -> Iterator[None]:
    """Run the experiments (or not) for the doctors attached inside this block."""
    _forced.append(on)
    try:
        yield
    finally:
        _forced.pop()
