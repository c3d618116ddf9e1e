"""TD303 dead-relu."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._objective import MIN_UPDATE, updates_to_initial
from .._registry import rule
from ._activations import flagged_layers, fmt


@rule(
    code="TD303",
    name="dead-relu",
    severity=Severity.WARNING,
    summary="Most ReLU units of a layer are never active over a window of sampled steps.",
    requires=(
        "activations.dead",
        "activations.sites",
        "activations.input_std",
        "params.norm",
        "params.update",
        "activations.pre_mean",
        "activations.pre_std",
        "activations.bias_mean",
    ),
    facts=("outcome",),
    priority=42,
)
def dead_relu(
    tl: TimelineView,
    *,
    threshold: float = 0.5,
    warn_at: float = 0.9,
    min_window: int = 3,
    min_units: int = 4,
) -> Iterator[Finding]:
    """
    ## What it detects
    A layer whose ReLU (or leaky ReLU) units are, for more than `threshold` (50%) of them, never
    positive for any sample of the batch in any of the last sampled steps (a window of up to 4),
    named after the module that produces the pre-activation (`fc2` for `relu(self.fc2(x))`).

    It is a warning when at least `warn_at` (90%) of the layer's units are dead: the layer has
    lost nearly all its capacity. Between the two it is info: healthy networks train well with
    half of a layer's units silent on the batches seen (pytorch/examples' MNIST net on noisy
    data: 53% of `fc1` never active, and the loss falls as usual).

    ## Why it matters
    A dead ReLU unit outputs 0 and passes back a zero gradient for every input: its incoming
    weights and bias never change again, so it stays dead for the rest of the run. A layer that
    is mostly dead has lost most of its capacity, and the layers before it get only the
    gradient that the few live units let through.

    ## How it is measured
    On sampled steps only, a TorchFunctionMode active during the model's forward sees every
    ReLU call (`nn.ReLU`, `F.relu`, `torch.relu`, `x.relu()`); per unit (channel for
    convolutions, last dimension otherwise) it computes `any(x > 0)` on the device, ORs it over
    the calls and the window, and reads back one fraction per layer with the step's batched
    read. The mean and std of the pre-activation and the mean bias of the producing module are
    read back with it and give the cause. When the optimizer steps move the weights by a
    median of more than their initial norm (||Δθ|| / ||θ_0|| >= 1, sampled steps after the
    first; healthy runs 0.002 to 0.06), that measured step size is given as the cause.

    ## Example
    ```python
    self.fc2 = nn.Linear(64, 32)
    nn.init.constant_(self.fc2.bias, -5.0)    # every pre-activation is below zero
    x = F.relu(self.fc2(x))
    ```

    ## Fix
    ```python
    nn.init.zeros_(self.fc2.bias)             # or PyTorch's default init
    # and/or: a lower learning rate, LeakyReLU/GELU, a normalization layer before the ReLU
    ```

    ## Known false positives
    Sparse-by-design layers (a ReLU gate that is meant to be off for most inputs) and tiny
    batches, where a unit may simply see no input that excites it in a few sampled steps.
    """
    flagged = flagged_layers(tl, "activations.dead", threshold, min_window, min_units)
    if not flagged:
        return  # the update sizes (every sampled step, every param) are read for a finding only
    moves = updates_to_initial(tl)
    blown = statistics.median(moves) if len(moves) >= 2 else None
    if blown is not None and blown < MIN_UPDATE:
        blown = None
    for d in flagged:
        layer = d["layer"]
        pct = round(100 * d["fraction"])
        pre_mean, pre_std, bias = d["pre_mean"], d["pre_std"], d["bias_mean"]
        facts = f"mean pre-activation {fmt(pre_mean)} (std {fmt(pre_std)})"
        # Exactly 0 for every sample and unit: a constant layer (zero weights and bias, or a
        # zero input), not units that training drove below zero; TD104 names the zero weights.
        constant = pre_mean == 0 and pre_std == 0
        if constant:
            cause = (
                f"{facts}: `{layer}` outputs exactly 0 for every sample, so its units were never "
                "active: its weights and bias are zero (a zero initialisation), or its input is"
            )
        elif pre_mean is not None and bias is not None and bias < 0 and bias <= 0.5 * pre_mean:
            cause = (
                f"{facts}: the pre-activations are pushed below zero by `{layer}`'s bias, whose "
                f"mean is {fmt(bias)}: a large negative bias shift (an init that sets it, or "
                "updates from a learning rate too high)"
            )
        elif pre_mean is not None and pre_std is not None and pre_mean < -0.5 * pre_std:
            cause = (
                f"{facts}: most pre-activations are negative; a learning rate too high often "
                "drives weights and biases there in a few large updates"
            )
        else:
            cause = (
                f"{facts}: the dead units get negative inputs for every sample while the rest of "
                "the layer does not; a learning rate too high is the usual cause"
            )
        fix = (
            f"re-initialize `{layer}`'s bias (zeros or PyTorch's default), lower the learning "
            "rate or warm it up, or use LeakyReLU/GELU or a normalization layer before the "
            "activation so units cannot die"
        )
        leaky = d["op"] == "leaky_relu"
        if leaky:
            # Already leaky: its units pass negative_slope x the gradient when negative, so
            # "use LeakyReLU" is no fix; they are never positive (the layer acts linearly).
            fix = (
                f"re-initialize `{layer}`'s bias (zeros or PyTorch's default), lower the "
                "learning rate or warm it up, or put a normalization layer before the activation"
            )
        if constant:
            fix = f"initialize `{layer}` randomly (its own reset_parameters()), see TD104"
        elif blown is not None:
            # Measured, not guessed: the steps moved the weights by more than their own norm.
            cause = (
                f"{facts}; the optimizer steps moved the weights by a median {blown:.3g}x their "
                "initial norm per step (healthy runs: about 0.002 to 0.06): a learning rate far "
                "too high drove the pre-activations below zero in a few updates"
            )
            fix = (
                "lower the learning rate by orders of magnitude (or warm it up): each step moves "
                f"the weights by more than their own norm; then re-initialize `{layer}`"
            )
        yield tl.finding(
            title=(
                f"{pct}% of the {'leaky ReLU' if leaky else 'ReLU'} units after `{layer}` "
                f"are never {'positive' if leaky else 'active'} "
                f"({d['units']} units, {d['window']} sampled steps)"
                + (
                    f", after steps of {blown:.3g}x the weights' initial norm"
                    if blown is not None
                    else ""
                )
            ),
            step=d["since_step"],
            evidence={
                "layer": layer,
                "dead_fraction": round(d["fraction"], 4),
                "units": d["units"],
                "window_sampled_steps": d["window"],
                "pre_activation_mean": pre_mean,
                "pre_activation_std": pre_std,
                "bias_mean": bias,
                "op": d["op"],
                **({"median_update_to_initial": round(blown, 4)} if blown is not None else {}),
            },
            where=Where(module=layer, op=d["op"]),
            cause=cause,
            fix=fix,
            confidence=0.8,
            # a constant layer is a consequence of its zero weights (TD104), said once there
            severity=None if d["fraction"] >= warn_at and not constant else Severity.INFO,
        )
