"""TD525 channels-last-viewed-as-channels-first."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

MAX_CHANNELS = 4  # grey+alpha, RGB, RGBA: the last dim of (N, H, W, C) images
MIN_SIDE = 8  # the spatial sizes, larger than any channel count


@rule(
    code="TD525",
    name="channels-last-viewed-as-channels-first",
    severity=Severity.WARNING,
    summary="(N, H, W, C) images reshaped or viewed to (N, C, H, W) for a conv, not permuted: "
    "each 'channel' plane the conv reads is a scramble of rows and colours.",
    requires=("data.first_layer",),
    priority=24,
)
def channels_last_viewed_as_channels_first(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    The first layer of the model is a 2-d convolution whose input (N, C, H, W), with C of 2
    to 4 and H, W of 8 or more, is a contiguous view of a tensor whose last three sizes are
    (H, W, C): channels-last images given the conv's shape by `reshape`/`view` instead of
    `permute(0, 3, 1, 2)`.

    ## Why it matters
    A reshape keeps the memory order: the first "channel" plane the conv reads is the first
    third of the image's (row, column, colour) values, red, green and blue of neighbouring
    pixels interleaved along each row. Nothing errors, the model still learns a little, and
    it never sees the image's spatial structure (PaddlePaddle/Paddle#29716: 40% against 70%
    accuracy; ikostrikov/pytorch-a3c#47). Measured on synthetic patterns: 0.96 against 1.00
    test accuracy with the permute.

    ## How it is measured
    On the structural steps the data probe records the first module with parameters that
    runs, the shape of its input and, when that input is a view sharing memory with a tensor
    of other sizes, read without a copy (contiguous: a permute would not be), that tensor's
    shape (`Tensor._base`). Host metadata only. An input built by any op that copies
    (`.float()`, a normalization, `.to(device)`, the DataLoader's collate of reshaped
    samples) no longer shows where it came from: not measured.

    ## Example
    ```python
    images = batch["image"]                         # (N, 32, 32, 3), channels last
    logits = model(images.reshape(-1, 3, 32, 32))   # a reshape, not a transpose
    ```

    ## Fix
    ```python
    logits = model(images.permute(0, 3, 1, 2))      # (N, 3, 32, 32), each plane one colour
    ```

    ## Known false positives
    A tensor allocated with the (H, W, C) sizes but filled in (C, H, W) order by hand, then
    viewed back: its data is channels-first whatever its sizes said.
    """
    for step, first in tl.series("data.first_layer"):
        if not isinstance(first, dict) or "Conv2d" not in str(first.get("type")):
            continue
        shape, base = first.get("shape"), first.get("view_of")
        if not isinstance(shape, list) or not isinstance(base, list) or len(shape) != 4:
            continue
        _n, c, h, w = shape
        if not (1 < c <= MAX_CHANNELS and h >= MIN_SIDE and w >= MIN_SIDE):
            continue
        if len(base) < 3 or list(base[-3:]) != [h, w, c]:
            continue
        module = first.get("module")
        yield tl.finding(
            title=f"`{module}` reads (N, {c}, {h}, {w}) images that are a reshape of "
            f"channels-last ({', '.join(map(str, base))}) data, not a permute",
            step=step,
            evidence={
                "module": module,
                "input_shape": shape,
                "view_of_shape": base,
            },
            where=Where(module=module),
            cause=f"the input of the first conv is a contiguous view of a tensor of shape "
            f"{tuple(base)} (height, width, {c} channels last): a reshape/view keeps the "
            f"memory order, so each of the {c} planes the conv reads interleaves the colours "
            "of neighbouring pixels and the rows of the image, not one colour channel",
            fix="move the channels with a permute: `x.permute(0, 3, 1, 2)` (or "
            "`torchvision.transforms.ToTensor()` per image, which does it), not "
            f"`reshape(-1, {c}, {h}, {w})`",
            confidence=0.9,
        )
        return
