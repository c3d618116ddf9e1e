"""When the live Doctor runs the rules: a deterministic schedule from counted work.

Rules run on the structural steps (structural findings must come within 3 steps), then every
50 steps, widening with the run; after a run of backward passes without an optimizer step
(TD105); and always once at close. A due pass is skipped while it would cost too much.
"""

from __future__ import annotations

from .budget import Budget, predicted_step_seconds

# Mid-run diagnoses may use this share of the overhead budget (see DiagnosisSchedule.due).
DIAGNOSIS_SHARE = 0.1
# Predicted cost of a diagnosis pass (bench/schedule_calibration.py): rules over the timeline.
DIAGNOSIS_BASE_S = 2e-3
DIAGNOSIS_PER_RECORD_S = 2e-6
# A fold (diagnosis.fold: the incremental rules read the new records, nothing else runs) at
# each multiple of this many steps with no pass or fold since the last: the records between two
# reads stay under the timeline's exact tail (TAIL steps), however rarely passes are affordable.
FOLD_EVERY = 1000
# Predicted cost of a fold per step folded (bench: TD108's and TD210's loss scans, ~22 us a step
# for both on this CPU). A fold that does not fit the diagnosis share is skipped like a pass:
# the records it would have read are then thinned first, and those rules read what is kept.
FOLD_PER_STEP_S = 2.5e-5
# Backward passes without an optimizer step after which the run is re-diagnosed (TD105).
NO_STEP_CHECKPOINTS = (8, 16, 32, 64, 128, 256, 512, 1024)


def predicted_pass_seconds(timeline_size: int) -> float:
    """A diagnosis pass's predicted cost over a timeline holding this many records."""
    return DIAGNOSIS_BASE_S + DIAGNOSIS_PER_RECORD_S * timeline_size


def diagnose_due(step: int, structural_steps: int = 3) -> bool:
    """Rules run on the structural steps, then every 50 steps, widening to every 250 after
    step 500 and every 2000 after step 5000, and the full diagnosis runs at close. A pass
    reads the in-memory timeline, bounded however long the run (timeline_retention.py); the
    widest interval stays under its exact tail (TAIL records), so the rules that keep a state
    between passes read every record of a per-step signal when no due pass was skipped."""
    if step <= structural_steps:
        return True
    every = 50 if step < 500 else 250 if step < 5000 else 2000
    return step % every == 0


class DiagnosisSchedule:
    """Decides, at each step's end, whether a mid-run diagnosis pass runs."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.diagnosed_at = 0  # the step of the last mid-run pass
        self.read_at = 0  # the step of the last mid-run pass or fold

    def due(self, step: int, timeline_size: int) -> bool:
        return diagnose_due(step, self.budget.structural_steps) and self.affordable(
            step, timeline_size
        )

    def ran(self, step: int) -> None:
        self.diagnosed_at = self.read_at = step

    def fold_due(self, step: int) -> bool:
        """Whether the incremental rules must read the new records now (see FOLD_EVERY):
        counted, not timed, like the passes."""
        if step % FOLD_EVERY or step - self.read_at < FOLD_EVERY:
            return False
        work = self.budget.work
        if work is None:
            return True
        share = predicted_step_seconds(work) * self.budget.budget * DIAGNOSIS_SHARE
        return share >= FOLD_PER_STEP_S

    def folded(self, step: int) -> None:
        self.read_at = step

    def affordable(self, step: int, timeline_size: int) -> bool:
        """A mid-run diagnosis reads the in-memory timeline (milliseconds; bounded, so it stops
        growing with the run after a few thousand steps): after the structural steps it runs
        only when its predicted cost (from the timeline's size) is under DIAGNOSIS_SHARE of
        the budget of the steps since the last pass (from the counted work, budget.py); otherwise it waits for the next due step. Counted, not
        timed: the passes, and the step each finding is first reported at, are the same in
        every run. The full diagnosis at close() is never skipped."""
        budget = self.budget
        work = budget.work
        if step <= budget.structural_steps or work is None:
            return True
        cost = predicted_pass_seconds(timeline_size)
        since = step - self.diagnosed_at
        return cost <= since * predicted_step_seconds(work) * budget.budget * DIAGNOSIS_SHARE


def after_backwards(backwards_without_step: int, most_per_step: int) -> bool:
    """Whether this many backward passes without an optimizer step call for a pass (and the
    `idle_backward` measurement): at the checkpoints, once past twice the most backward passes
    a step has had. Gradient accumulation of 8 micro-batches otherwise ran a pass at the 8th
    backward of every step, and wrote an event each step."""
    return backwards_without_step in NO_STEP_CHECKPOINTS and (
        backwards_without_step > 2 * most_per_step
    )
