"""Shared by TD201-TD203 and TD212: the `nonfinite` events the numerics probe's autopsy writes."""

from __future__ import annotations

from typing import Any

from ...timeline import TimelineView


def nonfinite_events(tl: TimelineView, firsts: tuple[str, ...]) -> list[dict[str, Any]]:
    """Autopsy events whose first cause is one of `firsts`, one per place, in step order."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for e in sorted(tl.events("nonfinite"), key=lambda e: e["step"]):
        if e.get("first") not in firsts:
            continue
        key = (e.get("first"), e.get("module"), e.get("op"))
        # An event without a line is completed by a later autopsy of the same place (zero-code
        # mode attaches after step 1's forward): keep the first step, take the op and line.
        pending = next(
            (
                k
                for k, v in out.items()
                if k[:2] == key[:2] and not v.get("source") and e.get("source")
            ),
            None,
        )
        if pending is not None:
            first = out.pop(pending)
            out[key] = {**first, "op": e.get("op") or first.get("op"), "source": e["source"]}
        elif key not in out:
            out[key] = e
    return list(out.values())


def first_nonfinite_step(tl: TimelineView) -> int | None:
    steps = [e["step"] for e in tl.events("nonfinite")]
    return min(steps) if steps else None


def nonfinite_steps(tl: TimelineView, series: list[tuple[int, Any]]) -> list[int]:
    return [s for s, what in series if what]


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def where_text(e: dict[str, Any]) -> str:
    bits = []
    if e.get("op"):
        bits.append(f"`{e['op']}`")
    if e.get("source"):
        bits.append(f"at {e['source']}")
    return " ".join(bits)
