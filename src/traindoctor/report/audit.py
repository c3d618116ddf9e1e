"""The "What trains" section of report.md: TD502's per-component table, from the finding's
evidence alone (so `traindoctor report DIR` renders it from findings.json)."""

from __future__ import annotations

from typing import Any

from ..findings import Finding

# Evidence keys of TD502 that are not component rows.
_NOT_ROWS = ("not_in_optimizer", "wrappers", "audited_at_steps")


def render_audit(findings: list[Finding]) -> list[str]:
    f = next((f for f in findings if f.code == "TD502"), None)
    if f is None:
        return []
    rows = [(k, v) for k, v in f.evidence.items() if k not in _NOT_ROWS and isinstance(v, dict)]
    if not rows:
        return []
    # The table is the latest audit; a finding keeps the step it was first reported at.
    steps = f.evidence.get("audited_at_steps") or [f.step]
    lines = [
        "## What trains",
        "",
        f"Trainable-parameter audit (TD502) as of step {steps[-1]}: values (tensors).",
        "",
        "| component | params | trainable | frozen | quantized | LoRA | norms | dtypes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in rows:
        label = f"**{name}**" if name == "total" else f"`{name}`"
        lines.append(
            f"| {label} | {_vt(r, 'params', 'tensors')} "
            f"| {_vt(r, 'trainable', 'trainable_tensors')} "
            f"| {_frozen(r)} | {_quantized(r)} | {_vt(r, 'lora', 'lora_tensors')} "
            f"| {r.get('norm_tensors', 0)} | {_dtypes(r.get('dtypes'))} |"
        )
    missing = f.evidence.get("not_in_optimizer")
    if missing:
        shown = ", ".join(f"`{n}`" for n in missing[:8])
        lines += ["", f"Trainable but held by no optimizer: {shown}"]
    if f.evidence.get("wrappers"):
        lines += ["", f"Components looked up under: {', '.join(f.evidence['wrappers'])}."]
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
