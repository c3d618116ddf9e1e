"""The `facts["ultralytics"]` the Ultralytics integration records, for rule tests that check
the Ultralytics wording on hand-built timelines (no ultralytics needed)."""

from __future__ import annotations

from typing import Any

ARGS = {"box": 7.5, "cls": 0.5, "dfl": 1.5, "plots": False, "nbs": 64, "batch": 16}


def validation(kind: str = "train", epoch: int = 1, **counts: Any) -> dict[str, Any]:
    """One validation as `_note_validator` records it (counts: targets, predictions, ...)."""
    return {
        "step": 4 * epoch,
        "kind": kind,
        "epoch": epoch,
        "confusion_matrix_sum": 0.0,
        "plots": False,
        "conf": 0.001,
        "images": 8,
        "targets": 12,
        "predictions": 300,
        "true_positives_iou50": 5,
        **counts,
    }


def facts(**overrides: Any) -> dict[str, Any]:
    """`{"ultralytics": {...}}` for make_timeline(facts=...): the trainer's args, the user's
    callbacks, validations, ...; `args=` is merged into the defaults."""
    recorded: dict[str, Any] = {
        "args": {**ARGS, **overrides.pop("args", {})},
        "accumulate": 1,
        "trainer": "DetectionTrainer",
        "ema": "ModelEMA",
        "user_callbacks": {},
        "validations": [],
    }
    recorded.update(overrides)
    return {"framework": "ultralytics", "ultralytics": recorded}
