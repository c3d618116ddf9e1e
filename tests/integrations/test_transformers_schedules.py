"""The schedulers the Hugging Face Trainer builds itself (`lr_scheduler_type` linear, cosine,
...: LambdaLRs over accelerate's AcceleratedOptimizer, which wraps the watched optimizer as
`.optimizer`) are seen by the schedule probe, as a plain loop's are: the `lr_scheduler` event
and its step counts. Before, only a ReduceLROnPlateau was matched through the wrapper, so a
Trainer-built linear/cosine schedule was invisible to TD503 (tiny local BERT, no download).
Healthy schedules stay silent, with gradient accumulation too; a linear decay sized in epochs
(`num_training_steps=num_train_epochs` in an overridden create_scheduler) is TD503's error."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

from transformers import Trainer, get_linear_schedule_with_warmup  # noqa: E402

from tests.integrations.test_transformers import Classes, arguments, bert, loud  # noqa: E402
from traindoctor.transformers import Doctor  # noqa: E402

pytestmark = pytest.mark.slow


def _train(tmp_path, trainer_cls=Trainer, **overrides):
    callback = Doctor(out_dir=tmp_path / "runs", console=False)
    args = arguments(tmp_path, max_steps=24, **overrides)
    trainer = trainer_cls(
        model=bert(), args=args, train_dataset=Classes(64, 1), callbacks=[callback]
    )
    trainer.train()
    return callback.report


@pytest.mark.parametrize(
    "kind,overrides",
    [
        ("linear", {"warmup_steps": 3}),
        ("cosine", {"warmup_steps": 3, "gradient_accumulation_steps": 2}),
        ("cosine_with_restarts", {"lr_scheduler_kwargs": {"num_cycles": 2}}),
        ("polynomial", {}),
        ("constant_with_warmup", {"warmup_steps": 5}),
    ],
)
def test_trainer_built_schedules_are_seen_and_healthy_ones_silent(tmp_path, kind, overrides):
    report = _train(tmp_path, lr_scheduler_type=kind, **overrides)
    scheds = report.timeline.events("lr_scheduler")
    assert [(e["cls"], e["optimizer"]) for e in scheds] == [("LambdaLR", "opt0")], scheds
    stepped = sum(v.get("sched0", 0) for _, v in report.timeline.series("schedule.steps"))
    assert stepped == 24  # once per optimizer step, accumulation or not
    assert loud(report) == [], loud(report)


class EpochSizedSchedule(Trainer):
    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = get_linear_schedule_with_warmup(
                self.optimizer if optimizer is None else optimizer,
                num_warmup_steps=0,
                num_training_steps=int(self.args.num_train_epochs),  # epochs, not steps
            )
        return self.lr_scheduler


def test_a_linear_decay_sized_in_epochs_is_found(tmp_path):
    report = _train(tmp_path, EpochSizedSchedule, num_train_epochs=3)
    codes = {f.code: f for f in report.findings}
    assert "TD503" in codes and codes["TD503"].severity.value == "error", report.findings
