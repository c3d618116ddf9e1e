"""TD502 trainable-audit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity
from ...timeline import TimelineView
from .._registry import rule

# Columns of the evidence table, most telling first (the console shows the first six).
COLUMNS = (
    "params",
    "trainable",
    "frozen",
    "quantized",
    "lora",
    "dtypes",
    "tensors",
    "trainable_tensors",
    "quantized_tensors",
    "lora_tensors",
    "norm_tensors",
    "quantized_classes",
)


@rule(
    code="TD502",
    name="trainable-audit",
    severity=Severity.INFO,
    summary="What trains, per component: params trainable/frozen, dtypes, quantized, LoRA.",
    requires=(),
    events=("audit",),
    facts=("audit",),
    priority=90,
)
def trainable_audit(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Nothing wrong by itself: an inventory of what trains, per top-level component of each
    watched model (its direct children, such as `vision_tower`, `projector`, `llm`, looked up
    under PEFT/DDP/`torch.compile` wrappers). For each: values and tensors in total, trainable
    and frozen, dtypes, quantized storage (uint8/int8, bitsandbytes `Params4bit`/`Int8Params`),
    LoRA adapters, norms, and trainable tensors that no optimizer holds.

    ## Why it matters
    Freezing, quantization and adapters decide what a run can learn, and they are set in
    several places (a loader's quantization config, `get_peft_model`, freezing loops, the
    optimizer's param list). A table of what actually trains settles "is the projector
    training?" in one look, and is the ground truth the other findings are read against.

    ## How it is measured
    One walk over `named_parameters()` of the watched models at attach (in zero-code mode at
    the first backward), and again on a sampled step after a `requires_grad` flag changed, the
    params were replaced or an optimizer's groups changed: never per step. A tensor is
    quantized when it is not floating point or its class is `Params4bit`/`Int8Params` (checked
    by name, bitsandbytes is not imported); LoRA when it sits under a `lora_A`/`lora_B`/
    `lora_embedding_*` module; a norm when its module's class name contains `Norm`. Values of
    a 4-bit tensor are counted from its `quant_state` shape (two per stored byte).

    ## Example
    ```python
    model = get_peft_model(llm_4bit, LoraConfig(target_modules=["q_proj", "v_proj"]))
    doc = td.watch(model, optimizer)   # TD502: llm trains 1,024 LoRA values, 14 4-bit tensors frozen
    ```

    ## Fix
    ```python
    # Nothing to fix when the table matches what you meant to train; otherwise freeze or
    # unfreeze by component, e.g.
    model.vision_tower.requires_grad_(False)
    ```

    ## Known false positives
    It is always reported (severity info) for a run that saw a model. Components are direct
    children: a model whose children are many similar layers (`nn.Sequential`) gets one row
    per layer, the smallest folded into one row.
    """
    audit = tl.fact("audit")
    if not audit or not audit.get("components"):
        return
    t = audit["totals"]
    rows = audit["components"]
    evidence: dict[str, Any] = {r["component"]: _columns(r) for r in rows}
    evidence["total"] = _columns(t)
    missing = [n for r in rows for n in r.get("not_in_optimizer", [])]
    if missing:
        evidence["not_in_optimizer"] = missing
    if audit.get("wrappers"):
        evidence["wrappers"] = audit["wrappers"]
    changes = sorted({e["step"] for e in tl.events("audit")})
    if len(changes) > 1:
        evidence["audited_at_steps"] = changes
    share = t["trainable"] / t["params"] if t["params"] else 0.0
    extras = []
    if t["quantized_tensors"]:
        classes = ", ".join(sorted(t["quantized_classes"]))
        extras.append(f"{_n(t['quantized_tensors'], 'quantized tensor')} ({classes})")
    if t["lora_tensors"]:
        extras.append(_n(t["lora_tensors"], "LoRA adapter tensor"))
    at = f" (as of step {audit['step']})" if len(changes) > 1 else ""
    title = (
        f"{t['trainable']:,} of {t['params']:,} values train ({share:.1%}), in "
        f"{t['trainable_tensors']} of {t['tensors']} tensors{at}"
        + (f"; {', '.join(extras)}" if extras else "")
    )
    yield tl.finding(
        title=title,
        step=audit.get("step"),
        evidence=evidence,
        cause="; ".join(_describe(r) for r in rows[:8]),
        fix="nothing to fix if this is what you meant to train; otherwise freeze or unfreeze "
        "by component (`model.<component>.requires_grad_(...)`) and rebuild the optimizer "
        "from the params that require grad",
    )


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in COLUMNS if k in row}


def _describe(r: dict[str, Any]) -> str:
    name = f"`{r['component']}`"
    if not r["tensors"]:
        return f"{name} holds no params"
    if r["trainable_tensors"] == 0:
        state = "frozen"
    elif r["frozen_tensors"] == 0:
        state = "trains fully"
    elif r["lora_trainable_tensors"] and r["lora_trainable_tensors"] == r["trainable_tensors"]:
        state = f"trains only its {r['lora_tensors']} LoRA adapter tensors ({r['lora']:,} values)"
    else:
        state = f"trains {r['trainable_tensors']} of {r['tensors']} tensors"
    if r["quantized_tensors"]:
        state += f", {_n(r['quantized_tensors'], 'quantized tensor')} frozen"
    return f"{name} {state}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
