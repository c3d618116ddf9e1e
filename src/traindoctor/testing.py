"""Helpers for rule authors: build a timeline by hand, run one rule on it, assert the outcome.

Rules are pure functions of the timeline and never import torch, so a rule test needs no model:

    from traindoctor.testing import assert_fires, assert_silent, make_timeline

    tl = make_timeline(
        params=["enc.weight", "head.weight"],
        steps={1: {"grads.none": ["head.weight"]}, 2: {"grads.none": ["head.weight"]}},
    )
    f = assert_fires("TD102", tl)
    assert f.where.params == ("head.weight",)

`assert_fires` and `assert_silent` also check what every rule promises: it is idempotent over the
same timeline, and it says the same thing offline, on the timeline re-read from timeline.jsonl
(what `traindoctor report DIR` does).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .findings import Finding
from .rules import get_rule
from .rules._registry import Rule
from .timeline import Timeline

__all__ = [
    "make_timeline",
    "param_facts",
    "optimizer_facts",
    "run_rule",
    "assert_fires",
    "assert_silent",
]


def param_facts(
    params: Iterable[str] | Mapping[str, Mapping[str, Any]],
    *,
    frozen: Iterable[str] = (),
    shape: tuple[int, ...] = (4,),
) -> dict[str, dict[str, Any]]:
    """The `params` fact as ParamsProbe writes it. Names get `shape` (default (4,)), float32 and
    requires_grad=True unless listed in `frozen`; a mapping overrides fields per name."""
    frozen = set(frozen)
    out: dict[str, dict[str, Any]] = {}
    items = params.items() if isinstance(params, Mapping) else ((n, {}) for n in params)
    for name, over in items:
        dims = list(over.get("shape", shape))
        info: dict[str, Any] = {
            "shape": dims,
            "dtype": "float32",
            "numel": _numel(dims),
            "requires_grad": name not in frozen,
        }
        info.update({k: v for k, v in over.items() if k != "shape"})
        out[name] = info
    return out


def optimizer_facts(
    *groups: Iterable[str],
    lr: float | Iterable[float | None] | None = 0.1,
    initial_lr: float | None = None,
    unnamed: Iterable[Mapping[str, Any]] = (),
    cls: str = "SGD",
    created_at: str | None = "train.py:10",
) -> dict[str, Any]:
    """One entry of the `optimizers` fact as OptimProbe writes it. Each positional argument is
    the param names of one group (ids `opt0/group0`, ...); `unnamed` (tensors that are not
    params of the model) go to the first group."""
    lrs = list(lr) if isinstance(lr, Iterable) else [lr] * max(1, len(groups))
    out_groups = []
    for gi, names in enumerate(groups or ((),)):
        out_groups.append(
            {
                "id": f"opt0/group{gi}",
                "lr": lrs[gi] if gi < len(lrs) else lrs[-1],
                "initial_lr": initial_lr,
                "weight_decay": 0.0,
                "params": list(names),
                "unnamed": [dict(u) for u in unnamed] if gi == 0 else [],
            }
        )
    return {"class": cls, "groups": out_groups, "created_at": created_at}


def make_timeline(
    *,
    params: Iterable[str] | Mapping[str, Mapping[str, Any]] | None = None,
    frozen: Iterable[str] = (),
    optimizers: list[dict[str, Any]] | None = None,
    steps: Mapping[int, Mapping[str, Any]] | None = None,
    events: Iterable[Mapping[str, Any]] = (),
    facts: Mapping[str, Any] | None = None,
    last_step: int | None = None,
    ended: bool = False,
) -> Timeline:
    """A timeline as the probes would have written it.

    - `params`: parameter names (or a mapping name -> overrides), see `param_facts`;
    - `optimizers`: the `optimizers` fact; by default one SGD group holding every param;
    - `steps`: {step: {signal: value}}, e.g. {1: {"grads.none": ["head.weight"]}};
    - `events`: dicts with at least `kind` and `step`;
    - `ended=True` marks the run as closed (rules that wait for more steps then decide at once).
    """
    tl = Timeline()
    if params is not None:
        tl.facts["params"] = param_facts(params, frozen=frozen)
        tl.facts["models"] = {"<model>": "Net"}
        if optimizers is None:
            optimizers = [optimizer_facts(list(tl.facts["params"]))]
    if optimizers is not None:
        tl.facts["optimizers"] = optimizers
    if ended:
        tl.facts["outcome"] = {"ended": "normal"}
    tl.facts.update(facts or {})
    for step, signals in sorted((steps or {}).items()):
        for name, value in signals.items():
            tl.record(step, name, value)
    for e in events:
        facts_ = dict(e)
        tl.event(int(facts_.pop("step")), facts_.pop("kind"), **facts_)
    tl.last_step = last_step if last_step is not None else max(steps or (), default=0)
    return tl


def run_rule(code: str, timeline: Timeline, **options: Any) -> list[Finding]:
    """Run the rule registered under `code` on `timeline` (options override its defaults).

    The view is strict: a read the rule does not declare in `@rule(...)` raises, so a rule
    cannot depend on a probe's output and still be judged when that probe failed."""
    return _rule(code).run(timeline.view(_rule(code), strict=True), options)


def assert_fires(code: str, timeline: Timeline, *, count: int = 1, **options: Any) -> Finding:
    """Assert the rule reports exactly `count` findings; return the first."""
    found = _checked(code, timeline, options)
    assert len(found) == count, (
        f"{code} should report {count} finding(s), reported {len(found)}: "
        + "; ".join(f.title for f in found)
    )
    for f in found:
        assert f.code == code, f
        assert f.title, f"{code}: a finding needs a title"
        assert f.fix, f"{code}: a finding needs a fix"
    return found[0]


def assert_silent(code: str, timeline: Timeline, **options: Any) -> None:
    found = _checked(code, timeline, options)
    assert not found, f"{code} should stay silent, reported: " + "; ".join(
        f"{f.title} (step {f.step})" for f in found
    )


def _rule(code: str) -> Rule:
    r = get_rule(code)
    if r is None:
        raise LookupError(f"no rule registered under {code!r}")
    return r


def _checked(code: str, timeline: Timeline, options: dict[str, Any]) -> list[Finding]:
    found = run_rule(code, timeline, **options)
    again = run_rule(code, timeline, **options)
    assert [f.to_dict() for f in found] == [f.to_dict() for f in again], (
        f"{code} is not idempotent over the same timeline"
    )
    offline = run_rule(code, _roundtrip(timeline), **options)
    assert [f.to_dict() for f in found] == [f.to_dict() for f in offline], (
        f"{code} reports differently on the timeline re-read from timeline.jsonl"
    )
    return found


def _roundtrip(timeline: Timeline) -> Timeline:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.jsonl"
        path.write_text("".join(line + "\n" for line in timeline.to_jsonl_lines()), "utf-8")
        return Timeline.from_jsonl(path)


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
