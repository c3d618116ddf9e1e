"""The "What trains" section of report.md: TD502's per-component table, from the finding's
evidence alone (so `traindoctor report DIR` renders it from findings.json)."""

from __future__ import annotations

from typing import Any

from ..findings import Finding

# Evidence keys of TD502 that are not component rows.
_NOT_ROWS = ("not_in_optimizer", "wrappers", "audited_at_steps")


AUDIT_HEADER = (
    "component",
    "params",
    "trainable",
    "frozen",
    "quantized",
    "LoRA",
    "norms",
    "dtypes",
)


def audit_table(findings: list[Finding]) -> tuple[int, list[list[str]], list[str]] | None:
    """TD502's table as plain cells: (step of the audit, rows under AUDIT_HEADER, notes)."""
    f = next((f for f in findings if f.code == "TD502"), None)
    if f is None:
        return None
    rows = [(k, v) for k, v in f.evidence.items() if k not in _NOT_ROWS and isinstance(v, dict)]
    if not rows:
        return None
    # The table is the latest audit; a finding keeps the step it was first reported at.
    steps = f.evidence.get("audited_at_steps") or [f.step]
    cells = [
        [
            name,
            _vt(r, "params", "tensors"),
            _vt(r, "trainable", "trainable_tensors"),
            _frozen(r),
            _quantized(r),
            _vt(r, "lora", "lora_tensors"),
            str(r.get("norm_tensors", 0)),
            _dtypes(r.get("dtypes")),
        ]
        for name, r in rows
    ]
    notes = []
    missing = f.evidence.get("not_in_optimizer")
    if missing:
        notes.append("Trainable but held by no optimizer: " + ", ".join(missing[:8]))
    if f.evidence.get("wrappers"):
        notes.append(f"Components looked up under: {', '.join(f.evidence['wrappers'])}.")
    return steps[-1], cells, notes


def render_audit(findings: list[Finding]) -> list[str]:
    table = audit_table(findings)
    if table is None:
        return []
    step, cells, notes = table
    lines = [
        "## What trains",
        "",
        f"Trainable-parameter audit (TD502) as of step {step}: values (tensors).",
        "",
        "| " + " | ".join(AUDIT_HEADER) + " |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in cells:
        label = f"**{row[0]}**" if row[0] == "total" else f"`{row[0]}`"
        lines.append("| " + " | ".join([label, *row[1:]]) + " |")
    for note in notes:
        lines += ["", note]
    lines.append("")
    return lines


def _vt(r: dict[str, Any], values: str, tensors: str) -> str:
    v, t = r.get(values, 0), r.get(tensors)
    return f"{v:,}" if t is None else f"{v:,} ({t})"


def _frozen(r: dict[str, Any]) -> str:
    tensors = r.get("tensors")
    trainable = r.get("trainable_tensors")
    if tensors is None or trainable is None:
        return f"{r.get('frozen', 0):,}"
    return f"{r.get('frozen', 0):,} ({tensors - trainable})"


def _quantized(r: dict[str, Any]) -> str:
    text = _vt(r, "quantized", "quantized_tensors")
    classes = r.get("quantized_classes") or {}
    if classes:
        text += " " + ", ".join(sorted(classes))
    return text


def _dtypes(dtypes: Any) -> str:
    if not isinstance(dtypes, dict):
        return ""
    return ", ".join(f"{k} ×{v}" for k, v in dtypes.items())
