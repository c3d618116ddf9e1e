"""TD212 nonfinite-masked."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

# Ops that write a value given to them (a -inf fill of masked positions), not compute one.
_WRITES_ON_PURPOSE = frozenset(
    {
        "masked_fill",
        "masked_fill_",
        "fill_",
        "index_fill",
        "index_fill_",
        "where",
        "full",
        "full_like",
    }
)


@rule(
    code="TD212",
    name="nonfinite-masked",
    severity=Severity.ERROR,
    summary="A module outputs NaN/Inf but the loss stays finite: NaN-prevention code hides it.",
    requires=("numerics.checked", "numerics.nonfinite"),
    events=("nonfinite_masked",),
    priority=27,
)
def nonfinite_masked(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    On sampled steps, a module output (or the input batch) holds NaN/Inf while the loss is
    finite: something downstream (`torch.nan_to_num`, `torch.where(torch.isnan(x), ...)`,
    `masked_fill`, `clamp`) replaces the values before the loss. Names the first such module
    and the op and source line that mask it.

    ## Why it matters
    The model upstream is broken, but the training looks fine: the loss is finite and nothing
    warns. The replaced elements get a zero gradient, so the broken part never learns its
    way out, and the masking constant leaks into the predictions.

    ## How it is measured
    On sampled steps, forward hooks reduce each module's output to one `isfinite(...).all()`
    flag on the device; the flags are read with the step's single finiteness read. When a
    module is non-finite while the loss is finite, the batch is replayed on a deep copy of the
    model with a TorchFunctionMode that names the first op producing the non-finite values and
    the op turning them back into finite ones. The gradient that op passes back is measured on
    a detached stand-in (d sum(out) / d input, per element): `nan_to_num` passes exactly 1 to
    the finite elements and 0 to the replaced ones; it does not zero the whole gradient.

    ## Example
    ```python
    h = self.scale(x) / self.norm(x)        # norm is 0 for some rows -> inf / nan
    h = torch.nan_to_num(h)                 # hides it: the loss stays finite
    ```

    ## Fix
    ```python
    h = self.scale(x) / self.norm(x).clamp_min(1e-6)   # fix the op that produces the NaN
    ```

    When the first op that makes the values non-finite writes them on purpose (`masked_fill`
    with -inf on an attention mask, `torch.where(mask, x, -inf)`, `fill_`), the NaN of a fully
    masked softmax row zeroed afterwards is the masking idiom, not a broken module: info.

    ## Known false positives
    A -inf constant made another way (`torch.tensor(float('-inf'))` added to the scores) and
    masked later is still an error.
    """
    events = sorted(tl.events("nonfinite_masked"), key=lambda e: e["step"])
    if not events:
        return  # the sampled-step counts below are read only for a finding (issue 15)
    checked = tl.series("numerics.checked")
    nonfinite = tl.series("numerics.nonfinite")
    activation_steps = [s for s, what in nonfinite if "activations" in (what or ())]
    sampled = sum(1 for _, c in checked if "activations" in (c or {}))
    seen: set[str] = set()
    for e in events:
        module = e.get("module")
        if module in seen:
            continue
        seen.add(module)
        mask = e.get("mask") or {}
        what = "the input batch" if e.get("input") else f"`{module}`"
        produced = (
            f" (made by `{e['op']}` at {e['source']})" if e.get("op") and e.get("source") else ""
        )
        # -inf written on purpose (an attention or padding mask): a fully masked row's NaN,
        # replaced afterwards, is the masking idiom; the values were never a module's failure.
        on_purpose = (e.get("op") or "") in _WRITES_ON_PURPOSE
        if mask:
            hidden = f"`{mask.get('op')}`" + (f" at {mask['source']}" if mask.get("source") else "")
            grad = ""
            if mask.get("grad_finite_elements") is not None:
                grad = (
                    f"; measured: it passes a gradient of {mask['grad_finite_elements']:.3g} "
                    f"to the finite elements and {mask.get('grad_masked_elements') or 0:.3g} to "
                    f"the {mask.get('masked_fraction', 0):.1%} it replaced"
                )
            cause = (
                f"{what} outputs NaN/Inf{produced}; {hidden} replaces them before the loss{grad}"
            )
            if on_purpose:
                cause += (
                    f". `{e['op']}` writes the non-finite values on purpose (a mask): a row "
                    "masked whole gives NaN in a softmax, and replacing it is the usual idiom"
                )
        else:
            hidden = None
            cause = (
                f"{what} outputs NaN/Inf{produced}, but the loss is finite: code after it "
                "(nan_to_num, where(isnan, ...), masked_fill, clamp) replaces the values"
            )
        yield tl.finding(
            title=f"{what} outputs NaN/Inf at step {e['step']} but the loss is finite"
            + (f": hidden by {hidden}" if hidden else ""),
            step=e["step"],
            evidence={
                "fraction_nonfinite": e.get("fraction"),
                "mask": mask,
                "sampled_steps_checked": sampled,
                "steps_with_nonfinite_activations": len(activation_steps),
            },
            where=Where(
                module=module,
                op=mask.get("op") or e.get("op"),
                source=mask.get("source") or e.get("source"),
            ),
            cause=cause,
            fix="fix the op that produces the NaN/Inf (a division by a norm or count that can "
            "be 0, log of 0, sqrt of a negative) and remove the nan_to_num/where/clamp that "
            "hides it"
            if not on_purpose
            else "nothing if the masked rows are meant to be empty; otherwise check the mask "
            "(a padding mask inverted masks every real position)",
            severity=Severity.INFO if on_purpose else Severity.ERROR,
            confidence=0.4 if on_purpose else 0.9,
        )
