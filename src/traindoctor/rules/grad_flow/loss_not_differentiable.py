"""TD101 loss-not-differentiable."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import graphless_loss_events, trainable_names


@rule(
    code="TD101",
    name="loss-not-differentiable",
    severity=Severity.ERROR,
    summary="The loss has no grad_fn, so backward() cannot reach any parameter.",
    requires=("loss.backward", "backward.count"),
    events=("loss_not_differentiable",),
    facts=("optimizers", "params"),
    priority=10,
)
def loss_not_differentiable(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A training loss (the tensor `backward()` runs on, or the one passed to `doc.log(loss=...)`)
    that has no `grad_fn`: it is not connected to the model's parameters.

    ## Why it matters
    Without a graph, `backward()` either raises ("element 0 of tensors does not require grad")
    or, when the loss was re-wrapped with `requires_grad=True` to silence that error, runs and
    computes nothing: every step leaves the model as it was, while the loss curve looks normal.

    ## How it is measured
    Before each backward pass traindoctor looks at the root tensor: `grad_fn`, `requires_grad`,
    `is_leaf`, whether grad mode was on and whether it is an inference tensor. It compares this
    with the model's own output on the same step (recorded by a forward hook): if the output has
    a graph and the loss does not, the graph was cut between the two.

    ## Example
    ```python
    out = model(x)
    loss = criterion(out.detach(), y)      # or torch.tensor(loss.item(), requires_grad=True)
    loss.requires_grad_(True)              # silences the error, trains nothing
    loss.backward()
    ```

    ## Fix
    ```python
    out = model(x)
    loss = criterion(out, y)               # keep the graph from the model output to the loss
    loss.backward()
    ```

    ## Known false positives
    None known: a loss without `grad_fn` cannot train anything. A loss whose graph reaches
    only tensors an optimizer holds outside any module (SAC's `log_alpha`, a learnable loss
    weight) trains those tensors and is not reported. A detached copy passed to
    `doc.log(loss=loss.detach())` is not reported once `backward()` has been seen running on
    a loss with a graph; it is reported only when no backward pass was observed at all.
    """
    events = graphless_loss_events(tl)
    if not events:
        return
    e = events[0]
    model_out = e.get("model_output") or {}
    leaves = e.get("leaves")
    evidence = {
        "grad_fn": None,
        "requires_grad": e.get("requires_grad"),
        "is_leaf": e.get("is_leaf"),
        "grad_enabled": e.get("grad_enabled"),
        "model_output_grad_fn": model_out.get("grad_fn"),
        "times_seen": len(events),
    }
    if leaves is not None:
        evidence["grad_fn"] = e.get("grad_fn")
        evidence["graph_leaves"] = leaves[:8]
    if e.get("inference"):
        cause = "the loss is an inference tensor: it was computed inside torch.inference_mode()"
        fix = (
            "compute the training loss outside torch.inference_mode() (use it for evaluation only)"
        )
    elif not e.get("grad_enabled"):
        cause = (
            "the loss was computed with gradient recording off (inside torch.no_grad() or "
            "torch.set_grad_enabled(False)), so no graph was built"
        )
        fix = "run the forward pass and the loss outside torch.no_grad() during training"
    elif not trainable_names(tl) and tl.fact("params"):
        cause = "no parameter of the model requires grad (TD110), so nothing builds a graph"
        fix = "unfreeze the parameters you mean to train: module.requires_grad_(True)"
    elif leaves is not None:
        shapes = ", ".join(str(tuple(s)) for s in leaves[:4]) or "none"
        cause = (
            f"the loss has a graph ({e.get('grad_fn')}) but it reaches no model parameter, only "
            f"{len(leaves)} leaf tensor(s) of shape {shapes} created with requires_grad=True: the "
            "model output was detached (.detach(), .data, .item(), NumPy) and the loss re-wrapped "
            "with requires_grad_(True) / torch.tensor(..., requires_grad=True)"
        )
        fix = (
            "compute the loss from the model output itself (no .detach()/.item()/.numpy()) and "
            "remove the loss.requires_grad_(True) that hid the error"
        )
    elif model_out.get("grad_fn"):
        leaf = (
            " and then re-wrapped as a leaf with requires_grad=True"
            if e.get("requires_grad")
            else ""
        )
        cause = (
            f"the model output carries a graph ({model_out['grad_fn']}) but the loss does not: "
            f"the graph is cut between them by .detach(), .data, .item() or a NumPy round-trip{leaf}"
        )
        fix = (
            "compute the loss from the model output tensor itself (no .detach()/.item()/.numpy()); "
            "remove any loss.requires_grad_(True) / torch.tensor(loss_value, requires_grad=True)"
        )
    elif e.get("requires_grad") and e.get("is_leaf"):
        cause = (
            "the loss is a leaf tensor created with requires_grad=True (torch.tensor(value, "
            "requires_grad=True) or .requires_grad_() on a detached value): backward() runs but "
            "reaches no parameter"
        )
        fix = (
            "compute the loss with torch operations on the model output, without leaving the graph"
        )
    else:
        cause = "the loss was built from tensors that carry no graph (detached or constant inputs)"
        fix = "compute the loss from the model output without .detach(), .item() or NumPy"
    code = f" ({e['code']})" if e.get("code") else ""
    yield tl.finding(
        title=f"the loss passed to {'backward()' if e.get('via') == 'backward' else 'doc.log()'} "
        + ("reaches no parameter" if leaves is not None else "has no grad_fn")
        + code,
        step=e["step"],
        evidence=evidence,
        where=Where(source=e.get("source")),
        cause=cause,
        fix=fix,
    )
