"""TD501 grad-on-non-float."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule


@rule(
    code="TD501",
    name="grad-on-non-float",
    severity=Severity.ERROR,
    summary="requires_grad=True asked of an integer/quantized param (4-bit, int8): torch raises.",
    requires=(),
    events=("grad_on_non_float",),
    facts=("audit",),
    priority=3,
)
def grad_on_non_float(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    `param.requires_grad = True` (or `param.requires_grad_()`, `module.requires_grad_()`) on
    a parameter that is not floating point: 4-bit bitsandbytes weights (`Params4bit`, stored
    as uint8), int8 weights (`Int8Params`), integer tensors. Names the parameter, its
    component, its dtype and class, the line that asked, and what in the model *can* train.

    ## Why it matters
    torch raises `RuntimeError: only Tensors of floating point and complex dtype can require
    gradients` and the script stops, typically in an "unfreeze these components" loop that
    worked before quantization was switched on. Quantized weights cannot be trained
    directly; fine-tuning a quantized model goes through adapters (LoRA) and the float parts.

    ## How it is measured
    While a doctor is attached (in zero-code mode from the start of the script), the
    `requires_grad` setter and `requires_grad_()` of `torch.nn.Parameter` are wrapped: when
    torch's own setter raises on a non-float parameter, the parameter's name (from the
    watched models, or the module holding it), its dtype, class and component and the user's
    source line are recorded, and the same exception propagates unchanged. What can train
    comes from the trainable-parameter audit (TD502).

    ## Example
    ```python
    model.llm = get_peft_model(llm_4bit, lora_config)
    for comp in [model.vision_tower, model.projector, model.llm]:
        for p in comp.parameters():
            p.requires_grad = True          # RuntimeError on the first 4-bit weight
    ```

    ## Fix
    ```python
    for comp in [model.vision_tower, model.projector, model.llm]:
        for p in comp.parameters():
            if p.is_floating_point():       # LoRA adapters, norms, float layers
                p.requires_grad = True
    # or: load without quantization to fine-tune every weight of the LLM
    ```

    ## Known false positives
    None known: the request raised in torch. A script that catches the error and goes on
    still gets the finding, since the flag it meant to set was not set.
    """
    events = tl.events("grad_on_non_float")
    if not events:
        return
    first = events[0]
    audit = tl.fact("audit") or {}
    rows = {r["component"]: r for r in audit.get("components", [])}
    names = list(dict.fromkeys(e["param"] for e in events if e.get("param")))
    comps = list(dict.fromkeys(e["component"] for e in events if e.get("component")))
    comp = first.get("component")
    row = rows.get(comp) if comp else None
    kind = _kind(first)
    name = first.get("param") or "an unnamed param"
    at = f" at {first['source']}" if first.get("source") else ""
    in_comp = f" in `{comp}`" if comp else ""
    attempts = sum(e.get("count", 1) for e in events)
    evidence: dict[str, Any] = {
        "param": name,
        "class": first.get("class"),
        "dtype": first.get("dtype"),
        "component": comp,
        "asked_by": first.get("via"),
        "error": first.get("error"),
        "attempts": attempts,
    }
    if first.get("code"):
        evidence["line"] = first["code"]
    if row is not None:
        evidence["quantized_in_component"] = row["quantized_tensors"]
        evidence["quantized_params"] = row["quantized_names"]
    can = _can_train(audit)
    if can:
        evidence["can_train"] = can
    quantized_total = row["quantized_tensors"] if row else None
    reach = (
        f"`{comp}` holds {quantized_total} such tensors, so a loop over its parameters stops at "
        "the first"
        if quantized_total
        else "torch refuses gradients on any tensor that is not floating point"
    )
    can_text = "; ".join(f"{k}: {v}" for k, v in can.items())
    yield tl.finding(
        title=f"requires_grad=True asked of {kind} param `{name}`{in_comp} "
        f"({first.get('class')}, {first.get('dtype')}){at}: torch raises",
        step=first.get("step"),
        evidence=evidence,
        where=Where(module=comp, params=tuple(names), source=first.get("source")),
        cause=f"`{first.get('via')}` on a tensor stored as {first.get('dtype')} "
        f'({first.get("class")}) raises "{first.get("error")}": quantized weights cannot '
        f"require gradients. {reach}"
        + (f"; the same was asked of {len(comps)} components" if len(comps) > 1 else ""),
        fix="set requires_grad only on floating-point params (`if p.is_floating_point():`) "
        "and train the quantized weights through adapters"
        + (f"; what can train here: {can_text}" if can_text else "")
        + "; or load the model without quantization to fine-tune those weights",
        confidence=1.0,
    )


def _kind(event: dict[str, Any]) -> str:
    cls, dtype = event.get("class"), event.get("dtype")
    if cls == "Params4bit":
        return "4-bit quantized"
    if cls == "Int8Params" or dtype == "int8":
        return "int8 quantized"
    return f"non-float ({dtype})"


def _can_train(audit: dict[str, Any]) -> dict[str, str]:
    """What the audit says can require grad: LoRA adapters, float components (projectors,
    heads), and the float layers (norms, embeddings, heads) inside quantized components."""
    lora, float_comps, inside = [], [], []
    for r in audit.get("components", []):
        name = r["component"]
        if r["lora_tensors"]:
            lora.append(f"`{name}` {r['lora_tensors']} tensors ({r['lora']:,} values)")
        if r["tensors"] and not r["quantized_tensors"]:
            float_comps.append(f"`{name}` ({r['tensors']} tensors)")
        elif r["quantized_tensors"]:
            others = r["float_tensors"] - r["lora_tensors"]
            if others:
                norms = r["norm_tensors"]
                what = f"{others} float tensors" + (f", {norms} of them norms" if norms else "")
                inside.append(f"`{name}` {what}")
    out = {}
    if lora:
        out["LoRA adapters"] = ", ".join(lora)
    if float_comps:
        out["float components"] = ", ".join(float_comps)
    if inside:
        out["float layers of quantized components"] = ", ".join(inside)
    return out
