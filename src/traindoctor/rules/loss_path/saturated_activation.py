"""TD304 saturated-activation."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._activations import flagged_layers, fmt

# |x| beyond which the activation is saturated (|tanh| > 0.99, sigmoid < 0.01 or > 0.99)
_KNEE = {"tanh": 2.65, "sigmoid": 4.6}


@rule(
    code="TD304",
    name="saturated-activation",
    severity=Severity.WARNING,
    summary="Most tanh/sigmoid units of a layer sit in their flat tails over a window of steps.",
    requires=(
        "activations.saturated",
        "activations.sites",
        "activations.input_std",
        "activations.pre_mean",
        "activations.pre_std",
        "activations.bias_mean",
    ),
    facts=("outcome",),
    priority=43,
)
def saturated_activation(
    tl: TimelineView, *, threshold: float = 0.5, min_window: int = 3, min_units: int = 4
) -> Iterator[Finding]:
    """
    ## What it detects
    A layer whose tanh, sigmoid or hardtanh units are, for more than `threshold` (50%) of them,
    saturated (|tanh| > 0.99, sigmoid < 0.01 or > 0.99, hardtanh at its bounds) for at least 90%
    of the batch in every one of the last sampled steps (a window of up to 4), named after the
    module that produces the pre-activation.

    ## Why it matters
    In its tails the derivative of tanh or sigmoid is below 0.02 (hardtanh's is 0): the unit
    passes back almost no gradient, the weights before it barely move, and its output no longer
    depends on the input, so the layer acts as a fixed sign function.

    ## How it is measured
    On sampled steps only, a TorchFunctionMode active during the model's forward sees every
    tanh/sigmoid/hardtanh call (modules, `torch.tanh`, `F.sigmoid`, `x.sigmoid()`); per unit it
    computes on the device the share of the batch beyond the saturation knee of the
    pre-activation, ANDs "saturated" over calls and the window, and reads back one fraction per
    layer with the step's batched read, with the pre-activation std and the std of the model's
    input batch, which give the cause.

    ## Example
    ```python
    x = raw_features * 100                    # never standardized
    h = torch.tanh(self.fc1(x))               # |fc1(x)| ~ 60: tanh is +-1 everywhere
    ```

    ## Fix
    ```python
    x = (raw_features - mean) / std           # standardize inputs (or add a LayerNorm)
    h = torch.tanh(self.fc1(x))
    ```

    ## Known false positives
    Output layers that are meant to be confident (a sigmoid gate trained to be on or off), and
    hardtanh/clamp layers used on purpose as a bound.
    """
    for d in flagged_layers(tl, "activations.saturated", threshold, min_window, min_units):
        layer = d["layer"]
        op = d["op"] or "activation"
        pct = round(100 * d["fraction"])
        pre_std, input_std = d["pre_std"], d["input_std"]
        knee = _KNEE.get(op)
        facts = f"the pre-activation of `{layer}` has std {fmt(pre_std)}" + (
            f" while {op} saturates beyond |x| = {knee}" if knee else ""
        )
        if input_std is not None and input_std > 5:
            cause = (
                f"{facts}; the model's input batch has std {fmt(input_std)}: the inputs are not "
                "normalized, so their scale is too large for the activation"
            )
            fix = (
                "standardize the inputs (subtract the mean, divide by the std per feature) or add "
                f"a normalization layer (LayerNorm/BatchNorm) before `{layer}`'s {op}"
            )
        else:
            cause = (
                f"{facts} (model input std {fmt(input_std)}): the weights of `{layer}` or the "
                "activations feeding it have grown too large (init scale, learning rate)"
            )
            fix = (
                f"add a normalization layer before `{layer}`'s {op}, use a smaller init scale "
                "or learning rate, or an activation that does not saturate (ReLU/GELU)"
            )
        yield tl.finding(
            title=(
                f"{pct}% of the {op} units after `{layer}` are saturated "
                f"({d['units']} units, {d['window']} sampled steps)"
            ),
            step=d["since_step"],
            evidence={
                "layer": layer,
                "saturated_fraction": round(d["fraction"], 4),
                "units": d["units"],
                "window_sampled_steps": d["window"],
                "pre_activation_std": pre_std,
                "pre_activation_mean": d["pre_mean"],
                "input_std": input_std,
                "op": op,
            },
            where=Where(module=layer, op=op),
            cause=cause,
            fix=fix,
            confidence=0.8,
        )
