"""TD109 accumulation-scaling-inconsistent."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import Reader, fresh
from .._registry import rule
from .._util import fmt_factor


@rule(
    code="TD109",
    name="accumulation-scaling-inconsistent",
    severity=Severity.ERROR,
    summary="Micro-batch losses are multiplied by different constants before backward().",
    requires=("loss.factor", "loss.site", "loss.backward", "backward.count"),
    events=("backward_call", "backward_site"),
    priority=25,
    state=lambda: FactorCounts(),
)
def accumulation_scaling_inconsistent(
    tl: TimelineView, state: FactorCounts, *, max_distinct: int = 3
) -> Iterator[Finding]:
    """
    ## What it detects
    The constant a loss is scaled by just before `backward()` (e.g. `loss / accum_steps`)
    differs between micro-batches, within one optimizer step or across steps.

    ## Why it matters
    Under gradient accumulation each micro-batch must contribute with the same weight. When the
    division runs only sometimes (inside a debug block, only for the first batch), some
    micro-batches count N times more than others: the effective learning rate jumps by that
    factor and the logged loss no longer means what it seems.

    ## How it is measured
    At each backward pass traindoctor walks the top of the loss's autograd graph and multiplies
    out the constant Python numbers of its final `mul`/`div` nodes (the factor), without
    running anything. Factors are compared per line that calls `backward()` (two losses of a
    GAN are not micro-batches of one). A data-dependent divisor (`loss / mask.sum()`) is a tensor, not a
    constant, and is ignored; more than `max_distinct` distinct factors also means a
    data-dependent scale and is not reported. A Python number computed from the batch
    (`loss_sum / len(y)` with a shorter last batch, `/ int(mask.sum())`) is a normalizer, not a
    scale: where the loss values are known, each odd micro-batch's loss before the division is
    compared with its nearest common ones; if it is not on the same scale (a sum over fewer or
    more items, which the divisor compensates), the factor is not reported.

    ## Example
    ```python
    loss = criterion(model(x), y)
    if epoch == 0 and i == 0:
        print("debug", loss.item())
        loss = loss / accum                # scaling inside the debug block: first batch only
    loss.backward()
    ```

    ## Fix
    ```python
    loss = criterion(model(x), y) / accum  # every micro-batch, unconditionally
    loss.backward()
    ```

    ## Known false positives
    Dividing the last, shorter accumulation cycle of an epoch by its own length gives a second
    factor; it is reported because it changes that step's weight.
    """
    sites = state.judged(tl, max_distinct)
    if not sites:
        return  # one factor at every call site (the usual case): nothing read but new records
    for site, passes in _passes_by_site(tl).items():
        if site not in sites:
            continue  # one factor, or more than max_distinct: nothing _judge_site reports
        finding = _judge_site(tl, site, passes, max_distinct)
        if finding is not None:
            yield finding


class FactorCounts:
    """What TD109 keeps between passes (rules/_incremental.py): the distinct factors seen at
    each call site. While every site has one, there is nothing to judge and a pass reads only
    the new records; once a site has two, the passes are judged from the whole timeline. A
    site past `max_distinct` factors (a divisor computed from the batch: `loss_sum / n_tokens`)
    can never be reported again, as counts only grow: it is dropped for good, and its factors
    are no longer kept."""

    def __init__(self) -> None:
        self.factors, self.sites = Reader("loss.factor"), Reader("loss.site")
        self.readers = (self.factors, self.sites)
        self.seen: dict[int, set[float]] = {}  # site -> distinct factors (rounded, finite)
        self.open: dict[int, list] = {}  # step -> [factors, sites] not folded yet
        self.many: set[int] = set()  # sites past max_distinct settled factors: never reported

    def judged(self, tl: TimelineView, max_distinct: int) -> set[int]:
        """The call sites with 2 to `max_distinct` distinct factors (the newest step included):
        the only ones _judge_site can report."""
        if not fresh(self, tl):
            self.__init__()  # an earlier step was rewritten: read everything again
        for i, reader in enumerate(self.readers):
            settled, pending = reader.read(tl)
            for s, rec in settled + pending:
                self.open.setdefault(s, [None, None])[i] = rec
        f_done, s_done = self.factors.done, self.sites.done
        newest: dict[int, set[float]] = {}
        for step in sorted(self.open):
            fs, sites = self.open[step]
            # settled in both signals (a step with no site list reads as all site 0)
            settled = f_done is not None and step <= f_done and (s_done is None or step <= s_done)
            if settled:
                del self.open[step]
            for site, f in _factors(fs or [], sites):
                if site in self.many:
                    continue
                known = self.seen.setdefault(site, set())
                if settled:
                    known.add(f)
                    if len(known) > max_distinct:
                        self.many.add(site)
                        del self.seen[site]
                elif f not in known:
                    newest.setdefault(site, set()).add(f)
        out = set()
        for site in set(self.seen) | set(newest):
            if site in self.many:
                continue
            n = len(self.seen.get(site, set()) | newest.get(site, set()))
            if 2 <= n <= max_distinct:
                out.add(site)
        return out


def _factors(fs: list, sites: list | None) -> Iterator[tuple[int, float]]:
    """(site, rounded factor) of one step's backward passes, as _passes_by_site counts them."""
    step_sites = sites or [0] * len(fs)
    for i, f in enumerate(fs):
        if not math.isfinite(f):
            continue
        yield (step_sites[i] if i < len(step_sites) else 0), round(f, 12)


# One backward pass: (step, index within the step, factor, loss value before the factor or None)
Pass = tuple[int, int, float, "float | None"]


def _passes_by_site(tl: TimelineView) -> dict[int, list[Pass]]:
    """Backward passes grouped by the line that called backward().

    Factors are compared within one call site: a GAN's `loss_D * 0.5` and `loss_G` are two
    losses, not micro-batches of one. Timelines without sites count as a single site.
    """
    sites = dict(tl.series("loss.site"))
    values = dict(tl.series("loss.backward"))
    out: dict[int, list[Pass]] = {}
    for step, fs in tl.series("loss.factor"):
        step_sites = sites.get(step) or [0] * len(fs)
        step_values = values.get(step)
        if step_values is not None and len(step_values) != len(fs):
            step_values = None  # non-scalar roots: values cannot be matched to factors
        for i, f in enumerate(fs):
            # A non-finite constant is a numerics problem (TD2xx), not a scaling inconsistency.
            if not math.isfinite(f):
                continue
            site = step_sites[i] if i < len(step_sites) else 0
            value = step_values[i] if step_values is not None else None
            out.setdefault(site, []).append((step, i, f, value))
    return out


def _judge_site(tl: TimelineView, site: int, passes: list[Pass], max_distinct: int):
    counts = Counter(round(f, 12) for _, _, f, _ in passes)
    if len(counts) < 2 or len(counts) > max_distinct:
        return None
    common, _ = counts.most_common(1)[0]
    odd = [p for p in passes if round(p[2], 12) != common]
    if _normalizes(passes, common):
        return None
    odd_steps = sorted({s for s, _, _, _ in odd})
    ratio = max(counts) / min(counts) if min(counts) > 0 else float("inf")
    shares = {fmt_factor(f): n for f, n in counts.most_common()}
    only_first = odd_steps == [1] and all(i == 0 for _, i, _, _ in odd)
    if only_first:
        cause = (
            f"the loss is scaled by {fmt_factor(odd[0][2])} only on the first backward pass and by "
            f"{fmt_factor(common)} on all others at the same call site, so micro-batches are "
            f"weighted {ratio:g}x differently; a scaling line that runs once is typically inside a "
            "debug or first-batch block"
        )
    else:
        cause = (
            f"backward passes from the same line use {len(counts)} different loss scales "
            f"({', '.join(shares)}): the scaling runs on some micro-batches only, so their "
            f"weights differ by {ratio:g}x"
        )
    src = _site_source(tl, site, common)
    return tl.finding(
        title=f"loss scale differs between micro-batches: "
        f"{', '.join(f'{k} on {v}' for k, v in shares.items())} backward passes",
        step=odd_steps[0] if odd_steps else passes[0][0],
        evidence={"factors": shares, "odd_steps": odd_steps[:10], "weight_ratio": ratio},
        where=Where(source=src, op=_op(odd[0][2] if odd else common)),
        cause=cause,
        fix="scale every micro-batch loss the same way, unconditionally, right before "
        "backward(): loss = loss / accum_steps",
    )


def _site_source(tl: TimelineView, site: int, common: float) -> str | None:
    for e in tl.events("backward_site"):
        if e.get("site") == site:
            return e.get("source")
    calls = tl.events("backward_call")
    odd = next((e["source"] for e in calls if round(e.get("factor", 1.0), 12) != common), None)
    return odd or next((e["source"] for e in calls), None)


def _normalizes(passes: list[Pass], common: float, window: int = 4) -> bool:
    """True when the loss values show the odd factors normalize rather than scale.

    Scaling a mean (`loss / accum` on some micro-batches only) leaves the loss before the
    factor on the common scale: its log-ratio to the nearest common micro-batches is near 0.
    Normalizing a sum by its count (`loss_sum / n_items`) makes the value before the factor
    grow with the count: the log-ratio follows the factors' ratio instead. Reported (False)
    only if most odd micro-batches with a known value look scaled, or no value is known.
    """
    commons: list[tuple[int, float]] = []  # (pass ordinal, |value before the factor|)
    odd: list[tuple[int, float, float]] = []  # (ordinal, factor, |value before the factor|)
    for ordinal, (_, _, factor, value) in enumerate(passes):
        if value is None or not isinstance(value, int | float):
            continue
        if not math.isfinite(value) or value == 0:
            continue
        if round(factor, 12) == common:
            commons.append((ordinal, abs(value)))
        else:
            odd.append((ordinal, factor, abs(value)))
    if not odd or not commons:
        return False
    positions = [c[0] for c in commons]
    scaled = 0
    for pos, factor, value in odd:
        # The `window` common passes nearest to this one (positions are sorted).
        at = bisect.bisect_left(positions, pos)
        near = commons[max(0, at - window) : at + window]
        near = sorted(near, key=lambda c, pos=pos: abs(c[0] - pos))[:window]
        ref = sorted(v for _, v in near)[len(near) // 2]
        d = math.log(value / ref)
        expected = math.log(common / factor)  # what d is if the factor normalizes a count
        if abs(d) < abs(expected) / 3:
            scaled += 1
    return 2 * scaled <= len(odd)


def _op(f: float) -> str | None:
    if f == 1.0:
        return None  # the odd backward passes are the unscaled ones: no op to point at
    return "DivBackward0" if abs(f) < 1 else "MulBackward0"
