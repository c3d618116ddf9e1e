"""TD510 inputs-not-normalized."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

# First layers whose input scale does not matter: they normalize it, or take indices.
_SCALE_FREE = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "Embedding")
_SATURATING = ("Tanh", "Sigmoid", "Hardtanh", "Softsign", "Hardsigmoid", "LogSigmoid")


@rule(
    code="TD510",
    name="inputs-not-normalized",
    severity=Severity.WARNING,
    summary="The first layer receives inputs orders of magnitude away from unit scale.",
    requires=("data.first_layer", "data.first_stats", "activations.sites"),
    # After TD209/TD304 (35, 43): those name the measured consequence at the same layer, and
    # the bundled scenarios of raw-scale inputs rank them first; TD510 names the cause.
    priority=44,
)
def inputs_not_normalized(
    tl: TimelineView,
    *,
    max_scale: float = 20.0,
    min_scale: float = 1e-3,
    saturating_std: float = 3.0,
) -> Iterator[Finding]:
    """
    ## What it detects
    The first layer with weights (a Linear or Conv) receives floating-point inputs whose
    root-mean-square sqrt(mean² + std²) is above `max_scale` or below `min_scale`: raw 0–255
    pixels, features in their physical units. 8-bit data divided twice by 255
    (`ToTensor()`, then `/ 255`) has a scale of ~2e-3, above `min_scale`: it is known by its
    range, [0, 1/255] with 1/255 itself as its top (a 255 pixel). When the first layer
    feeds a tanh/sigmoid and its output std exceeds `saturating_std`, the finding says those
    units start saturated (TD304 measures how many stay so).

    ## Why it matters
    PyTorch's default initializations assume inputs of about unit scale. Inputs of scale 100
    make the first layer's outputs ~100x too large: a following tanh/sigmoid saturates
    (gradient ~0, nothing below it learns), logits start huge (a first loss far above ln C),
    and the first layer's gradient dominates the step, so a learning rate that suits the rest
    of the network is too large for it. Inputs near 0 leave the first layer's weights with
    almost no gradient.

    ## How it is measured
    On the structural steps (the first 3), forward hooks on the leaf modules find, in the
    step's first training forward, the first module with parameters that takes the model's
    main input as it is (its floating-point argument with the most values per sample, or a
    view of it: the images of `unet(x, t)`, not a timestep MLP that runs before), else the
    first module with parameters to run (after any normalization the model does itself),
    and the two leaf modules called after it; the mean,
    std, min and max of its input and the std of its output are computed on the device (a
    strided view of at most 262,144 elements) and read back in the batched read-back.
    Integer inputs (token ids, indices) and first layers that normalize (BatchNorm,
    LayerNorm, ...) or look up embeddings are not judged. A first layer followed by a BatchNorm
    (or an InstanceNorm) is reported as info: the batch's (the sample's) statistics cancel the
    input's scale in training. A tanh/sigmoid called functionally
    after the first layer is known from the activations probe's sites, when it ran.

    ## Example
    ```python
    x = torch.tensor(images, dtype=torch.float32)   # 0..255
    h = torch.tanh(model.fc1(x.flatten(1)))         # saturated from step 1
    ```

    ## Fix
    ```python
    x = torch.tensor(images, dtype=torch.float32) / 255.0
    x = (x - mean) / std                            # per-channel statistics of the train set
    ```

    ## Known false positives
    Inputs that are meant to be large and are rescaled by the first layer's own
    initialization (a custom init with weights ~1/scale) are reported too. Sparse one-hot
    vectors over a vocabulary of more than ~10⁶ entries fall below `min_scale`. A model that is
    a single layer (nothing runs after it) is not judged: its inputs and targets share units.
    """
    stats_by_step = dict(tl.series("data.first_stats"))
    for step, first in tl.series("data.first_layer"):
        stats = stats_by_step.get(step)
        if not isinstance(first, dict) or not isinstance(stats, dict):
            continue
        kind = str(first.get("type") or "")
        if not str(first.get("dtype", "")).startswith(("float", "bfloat")):
            continue
        if any(kind.startswith(k) or kind.endswith(k) for k in _SCALE_FREE):
            continue
        mean, std = _num(stats.get("in_mean")), _num(stats.get("in_std"))
        lo, hi = _num(stats.get("in_min")), _num(stats.get("in_max"))
        out_std = _num(stats.get("out_std"))
        if None in (mean, std, lo, hi):
            continue
        rms = math.sqrt(mean * mean + std * std)
        twice = _divided_twice_by_255(lo, hi)
        if (min_scale <= rms <= max_scale and not twice) or (lo == hi == 0.0):
            continue
        module = str(first.get("module"))
        act = _following_activation(tl, first)
        if not first.get("next") and act is None:
            # Nothing runs after it: the first layer is the whole model (a linear regression
            # onto targets in the same units), so its input scale is the targets' scale.
            continue
        saturates = (
            rms > max_scale and act is not None and out_std is not None and out_std > saturating_std
        )
        big = rms > max_scale
        # A BatchNorm right after the first layer (ResNet's conv1 -> bn1) normalizes each
        # channel with the batch's own statistics: the input's scale and offset cancel, and the
        # loss and gradients are those of normalized inputs (measured: same losses to 1e-6).
        # An InstanceNorm does the same per sample, in eval too (fast neural style's
        # TransformerNet is fed 0-255 pixels by design: conv1 -> in1).
        after = str((first.get("next") or [""])[0])
        absorbed = not saturates and after.startswith(("BatchNorm", "InstanceNorm"))
        evidence: dict[str, Any] = {
            "first_layer": module,
            "layer_type": kind,
            "input_mean": mean,
            "input_std": std,
            "input_min": lo,
            "input_max": hi,
            "input_rms": rms,
            "first_layer_output_std": out_std,
            "followed_by": act or (first.get("next") or [None])[0],
        }
        if twice:
            evidence["divided_twice_by_255"] = True
        measured = f"mean {mean:.3g}, std {std:.3g}, range [{lo:.3g}, {hi:.3g}]"
        if saturates:
            effect = (
                f"its outputs have std {out_std:.3g}, so the {act} after it is saturated "
                "(gradient ~0) from the first step"
            )
        elif big:
            effect = (
                f"its outputs have std {out_std:.3g} where unit-scale inputs give ~1"
                if out_std is not None
                else "its outputs are ~that many times too large"
            )
        elif twice:
            effect = (
                "they lie in [0, 1/255]: 8-bit values divided by 255 twice (ToTensor() already "
                "returns [0, 1]), so its weights get almost no gradient"
            )
        else:
            effect = "its weights get almost no gradient"
        if absorbed and after.startswith("InstanceNorm"):
            effect = (
                f"the {after} right after it normalizes each channel of each sample with its "
                "own statistics, so the scale and offset cancel"
            )
        elif absorbed:
            effect = (
                f"the {first['next'][0]} right after it normalizes each channel with the "
                "batch's statistics, so in training the scale cancels; it matters where those "
                "statistics are not the batch's (eval mode, a frozen BatchNorm) and the inputs "
                "there are scaled otherwise"
            )
        yield tl.finding(
            title=f"The first layer `{module}` ({kind}) receives inputs of scale {rms:.3g} "
            f"({measured})",
            step=step,
            evidence=evidence,
            where=Where(module=module),
            cause=f"measured on step {step}: the input of `{module}`, the first layer with "
            f"weights, has {measured}, {'far above' if big else 'far below'} the unit scale "
            f"its default initialization assumes; {effect}",
            fix=(
                "divide by 255 once: transforms.ToTensor() already scales 8-bit images to "
                "[0, 1], so drop the second `/ 255`, then standardize per channel"
                if twice
                else "normalize the inputs before the model: divide pixels by 255 and "
                "standardize per channel (x - mean) / std with statistics of the training set, "
                "or standardize each feature; a normalization layer as the first layer also "
                "works"
            ),
            confidence=0.9 if saturates else 0.7,
            severity=Severity.INFO if absorbed else None,
        )
        return


def _divided_twice_by_255(lo: float, hi: float) -> bool:
    """8-bit values divided by 255 twice lie in [0, 1/255] and their top (a 255 pixel) is
    1/255 itself: a scale of ~2e-3, above `min_scale`, but the range says how it was made."""
    return lo >= 0 and abs(hi * 255 - 1) <= 1e-5


def _following_activation(tl: TimelineView, first: dict[str, Any]) -> str | None:
    """The tanh/sigmoid right after the first layer: a module called next, or a functional
    call the activations probe saw on its output."""
    nxt = [str(t) for t in first.get("next") or ()]
    for t in nxt[:2]:
        if t in _SATURATING:
            return t
        if t not in ("Dropout", "Identity", "Flatten"):
            break
    module = first.get("module")
    for _, sites in tl.series("activations.sites"):
        site = (sites or {}).get(module) if isinstance(sites, dict) else None
        if isinstance(site, dict) and site.get("kind") in ("tanh", "sigmoid", "hardtanh"):
            return str(site.get("op") or site.get("kind"))
    return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None
