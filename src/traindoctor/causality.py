"""Causes before consequences: findings measured after a blow-up are ranked below and linked to it.

A learning rate far too high blows the weights up in a step or two; everything measured after
that (dead ReLUs, saturated units, vanishing gradients, a loss that no longer falls) is what
the blow-up left behind, not a second problem. Ranking them by their own priority put "dead
ReLU" above the divergence that killed the units. The link is made from measured steps only: a
consequence must first be seen at or after the step the blow-up was first seen.
"""

from __future__ import annotations

from dataclasses import replace

from .findings import Finding, Severity

# Findings that report a blow-up of the run: non-finite values, exploding gradients, a
# diverging or spiking loss, a GradScaler that collapsed on overflows.
BLOWUPS = frozenset({"TD201", "TD202", "TD203", "TD205", "TD206", "TD210"})
# Findings whose symptom a blow-up produces by itself when it is measured after it.
AFTERMATHS = frozenset({"TD104", "TD107", "TD108", "TD207", "TD303", "TD304"})


def link_consequences(findings: list[Finding]) -> list[Finding]:
    """Each aftermath first seen at or after the earliest blow-up is linked to that blow-up:
    evidence and cause say so, and it ranks right below it (never above its severity)."""
    blowups = [f for f in findings if f.code in BLOWUPS and _first(f) is not None]
    if not blowups:
        return findings
    root = min(blowups, key=lambda f: (_first(f), f.severity.rank, f.priority))
    root_step = _first(root)
    out = []
    for f in findings:
        step = _first(f)
        if f.code not in AFTERMATHS or step is None or step < root_step:
            out.append(f)
            continue
        severity = f.severity if f.severity.rank >= root.severity.rank else root.severity
        link = {"code": root.code, "step": root_step, "title": root.title}
        out.append(
            replace(
                f,
                severity=Severity(severity),
                priority=max(f.priority, root.priority + 1),
                evidence={**f.evidence, "after_blowup": link},
                cause=(
                    f"measured after the blow-up at step {root_step} ({root.code}: "
                    f"{root.title}), which is the likelier cause; {f.cause}"
                ),
            )
        )
    return out


def _first(f: Finding) -> int | None:
    steps = [s for s in (f.first_step, f.step) if s is not None]
    return min(steps) if steps else None
