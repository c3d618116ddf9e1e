"""TD208 in Ultralytics' words: the loss parts are weighted by the trainer's gains."""

from __future__ import annotations

from ...findings import Finding
from ...timeline import TimelineView
from .._ultralytics import ultralytics_facts, with_note

GAINS = ("box", "cls", "dfl")


def loss_component_dominates(tl: TimelineView, f: Finding) -> Finding:
    """Name the gain (`box=`, `cls=`, `dfl=`) that weighs the dominant part, and lower it."""
    facts = ultralytics_facts(tl)
    gain = str((f.evidence or {}).get("dominant", "")).removesuffix("_loss")
    if facts is None or gain not in GAINS:
        return f
    args = facts.get("args") or {}
    gains = ", ".join(f"`{g}={args.get(g)}`" for g in GAINS)
    return with_note(
        f,
        note=(
            f" Ultralytics multiplies each part by its gain before the sum it "
            f"back-propagates: here {gains}."
        ),
        fix=(
            f"Lower the `{gain}` gain in `model.train({gain}=...)` (or the data/cfg yaml) "
            "until the gradient shares are comparable; the defaults are box=7.5, cls=0.5, "
            "dfl=1.5."
        ),
        evidence={"ultralytics_gains": {g: args.get(g) for g in GAINS}},
    )
