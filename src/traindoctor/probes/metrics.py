"""Metrics: what `traindoctor.evaluate()` saw in each validation, as counts (no copies kept).

`EvalTally` counts on the device, batch by batch, how many targets and predictions fell in
each class (or were positive, for binary and multilabel tasks) and reads the counts back once
per validation. `MetricsProbe` writes one summary per validation into the timeline, plus the
metrics that were computed where they are undefined. Rules TD404 and TD406 read them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..timeline import signal
from .base import Probe, Recorder

EVAL_RUN = signal(
    "eval.run",
    "per step: list of one summary per evaluate() call: batches, samples, task, target and "
    "prediction class counts, the values computed and logged",
)
EVAL_UNDEFINED = signal(
    "eval.undefined",
    "per step: list of metrics evaluate() found undefined (metric, class, reason, counts)",
)

BINARY, MULTICLASS, MULTILABEL = "binary", "multiclass", "multilabel"


class MetricsProbe(Probe):
    """Records what evaluate() measured; it has no hooks of its own (evaluate() calls it)."""

    name = "metrics"
    provides: ClassVar[tuple[str, ...]] = (EVAL_RUN, EVAL_UNDEFINED)

    def record_evaluation(
        self, step: int, summary: dict[str, Any], undefined: list[dict[str, Any]], rec: Recorder
    ) -> None:
        rec.append(step, EVAL_RUN, summary)
        for entry in undefined:
            rec.append(step, EVAL_UNDEFINED, entry)


class EvalTally:
    """Class counts of one validation, accumulated on the device without a host sync.

    `task` is binary (elementwise 0/1 targets; predictions thresholded like torchmetrics:
    sigmoid when a batch is outside [0, 1], then `> threshold`), multilabel (the same, per
    label along dim 1) or multiclass (`classes` classes; predictions are the argmax along dim
    1 of scores, class indices, or one-hot along dim 1 with `one_hot`). Targets equal to `ignore_index` are not counted.
    """

    def __init__(
        self,
        task: str | None,
        classes: int | None = None,
        threshold: float = 0.5,
        ignore_index: int | None = None,
        one_hot: bool = False,
    ) -> None:
        self.task = task
        self.one_hot = one_hot
        self.classes = classes
        self.threshold = threshold
        self.ignore_index = ignore_index
        self.batches = 0
        self.samples = 0
        # [elements, target counts (k), prediction counts (k)], int64 on the batch's device
        self._acc: torch.Tensor | None = None

    def add(self, preds: Any, target: Any) -> None:
        self.batches += 1
        if not isinstance(target, torch.Tensor):
            return
        self.samples += int(target.shape[0]) if target.dim() else 1
        if self.task is None or not isinstance(preds, torch.Tensor):
            return
        preds, target = preds.detach(), target.detach()
        if self.task == MULTICLASS:
            counts = self._multiclass(preds, target)
        else:
            counts = self._binary(preds, target, per_label=self.task == MULTILABEL)
        if counts is None:
            return
        self._acc = counts if self._acc is None else self._acc + counts.to(self._acc.device)

    def _keep(self, target: torch.Tensor) -> torch.Tensor:
        if self.ignore_index is None:
            return torch.ones_like(target, dtype=torch.bool)
        return target != self.ignore_index

    def _binary(
        self, preds: torch.Tensor, target: torch.Tensor, per_label: bool
    ) -> torch.Tensor | None:
        if preds.shape != target.shape:
            return None
        if preds.is_floating_point():
            outside = ((preds < 0) | (preds > 1)).any()  # stays on the device: no sync
            preds = torch.where(outside, preds.sigmoid(), preds) > self.threshold
        keep = self._keep(target)
        pos_t = (target == 1) & keep
        pos_p = (preds != 0) & keep
        if per_label:
            if target.dim() < 2:
                return None
            dims = [d for d in range(target.dim()) if d != 1]
            n = keep.sum(dims)
            return torch.cat([n, pos_t.sum(dims), pos_p.sum(dims)]).long()
        return torch.stack([keep.sum(), pos_t.sum(), pos_p.sum()]).long()

    def _multiclass(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        classes = self.classes
        if classes is None:
            return None
        # Scores or one-hot along dim 1 become class indices (torchmetrics' formats).
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(1)
        elif target.dim() == preds.dim() + 1:
            target = target.argmax(1)
        elif self.one_hot and preds.dim() >= 2:
            preds, target = preds.argmax(1), target.argmax(1)
        if preds.is_floating_point() or preds.shape != target.shape:
            return None
        keep = self._keep(target) & (target >= 0) & (target < classes)
        hist_t = torch.zeros(classes, dtype=torch.long, device=target.device)
        hist_p = torch.zeros(classes, dtype=torch.long, device=target.device)
        # scatter_add_ with a known size: bincount would sync to find the largest class
        hist_t.scatter_add_(
            0, torch.where(keep, target, 0).reshape(-1).long(), keep.reshape(-1).long()
        )
        pred_ok = keep & (preds >= 0) & (preds < classes)
        hist_p.scatter_add_(
            0, torch.where(pred_ok, preds, 0).reshape(-1).long(), pred_ok.reshape(-1).long()
        )
        return torch.cat([keep.sum().reshape(1), hist_t, hist_p]).long()

    def read(self) -> dict[str, Any]:
        """The counts on the host: one device-to-host transfer."""
        out: dict[str, Any] = {
            "task": self.task,
            "batches": self.batches,
            "samples": self.samples,
            "threshold": self.threshold if self.task in (BINARY, MULTILABEL) else None,
        }
        if self._acc is None:
            out["elements"] = 0 if self.task else None
            return out
        vals = [int(v) for v in self._acc.cpu().tolist()]  # the one host sync
        if self.task == BINARY:
            n, pos_t, pos_p = vals
            out.update(elements=n, target_pos=pos_t, pred_pos=pos_p)
        elif self.task == MULTILABEL:
            k = len(vals) // 3
            n, pos_t, pos_p = vals[:k], vals[k : 2 * k], vals[2 * k :]
            out.update(elements=sum(n), label_elements=n, target_pos=pos_t, pred_pos=pos_p)
        else:
            k = (len(vals) - 1) // 2
            out.update(elements=vals[0], target_hist=vals[1 : 1 + k], pred_hist=vals[1 + k :])
        return out
