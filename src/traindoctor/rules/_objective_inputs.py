"""What `objective()` reads of the timeline, parsed once per record (rules/_incremental.py).

`ObjectiveScan` keeps the parsed records between passes (an incremental rule holds one in its
state; a fresh one is a fresh pass), so a pass parses only the records written since the last:
the names the updates moved, the observed loss sites, each site's target stats and label
counts, the label totals, the per-step update sizes against the initial weights, and the
training loss at the observed steps. The newest step of each signal, which may still be
written, is parsed for the pass only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..timeline import TimelineView
from ._incremental import Reader, SortedWindow, fresh, step_mean

Stats = dict[int, list[tuple[int, dict[str, float]]]]
Labels = dict[int, list[dict[int, float]]]


@dataclass
class Inputs:
    """The parsed inputs of one pass (read-only for the functions of _objective.py)."""

    stepped: set[str]  # params with a nonzero update at some sampled step
    observed: set[int]  # loss sites seen taking the model's output
    any_observed: bool  # loss_inputs.observed was recorded at all
    stats: Stats  # site -> [(step, {stat: value})]
    labels: Labels  # site -> [{class: count}]
    totals: dict[str, float]  # "site.class" -> count over the run
    moves: list[float]  # updates_to_initial()
    targets: dict[int, Targets]  # site -> what _own_class reads of its targets
    #: share(sites, per_target, against): (sum of the sites' standard losses) / (a loss of the
    #: step), median over the observed steps, None under 3 steps (or per target, none summed).
    #: `against` (REFERENCES): "loss" the training loss (the logged one when the run logs one,
    #: else the backward roots' mean); "pass" the step's last backward root, the pass whose
    #: loss call the stats keep (its constant factor divided out by the loss probe); "sum"
    #: the logged loss per backward pass of the step (None with one pass).
    share: Callable[[tuple[int, ...], bool, str], float | None]
    logged: bool  # the training loss is the logged one


@dataclass
class Targets:
    """A site's targets as _own_class reads them, kept as the records come: how many steps
    had a t_min, the distinct t_min and t_max values (two are enough to tell "not one value"),
    and the kinds of label histograms ((classes seen, every count equal and positive): count)."""

    n_mins: int = 0
    mins: set[float] = field(default_factory=set)
    maxs: set[float] = field(default_factory=set)
    n_hists: int = 0
    kinds: dict[tuple[int, bool], int] = field(default_factory=dict)

    def add_stats(self, d: dict[str, float]) -> None:
        if "t_min" in d:
            self.n_mins += 1
            _add_capped(self.mins, d["t_min"])
        if "t_max" in d:
            _add_capped(self.maxs, d["t_max"])

    def add_hist(self, h: dict[int, float]) -> None:
        self.n_hists += 1
        even = bool(h) and len({round(c, 6) for c in h.values()}) == 1 and min(h.values()) > 0
        kind = (len(h), even)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def copy(self) -> Targets:
        return Targets(self.n_mins, set(self.mins), set(self.maxs), self.n_hists, dict(self.kinds))


def _add_capped(values: set[float], v: float) -> None:
    if len(values) < 2:
        values.add(v)


def parse_stats(values: dict[str, Any]) -> dict[int, dict[str, float]]:
    by_site: dict[int, dict[str, float]] = {}
    for key, v in (values or {}).items():
        site, _, stat = key.partition(".")
        if site.isdigit() and isinstance(v, int | float):
            by_site.setdefault(int(site), {})[stat] = float(v)
    return by_site


def parse_labels(values: dict[str, Any]) -> dict[int, dict[int, float]]:
    by_site: dict[int, dict[int, float]] = {}
    for key, v in (values or {}).items():
        site, _, cls = key.partition(".")
        if site.isdigit() and cls.isdigit():
            by_site.setdefault(int(site), {})[int(cls)] = float(v)
    return by_site


def move_of(step: int, upd: dict[str, float], initial: dict[str, Any]) -> float | None:
    """The median over params of ||Δθ_t|| / ||θ_0|| at one sampled step (none at step 1:
    Adam's first step moves every weight by lr, large by construction)."""
    if step <= 1:
        return None
    rs = [d / initial[n] for n, d in upd.items() if initial.get(n)]
    return statistics.median(rs) if rs else None


REFERENCES = ("loss", "pass", "sum")


class ObjectiveScan:
    """The parsed inputs of objective() kept between passes."""

    def __init__(self) -> None:
        self.update, self.norm = Reader("params.update"), Reader("params.norm")
        self.obs, self.stat = Reader("loss_inputs.observed"), Reader("loss_inputs.stats")
        self.label = Reader("loss_inputs.labels")
        self.train, self.back = Reader("loss.train"), Reader("loss.backward")
        self.readers = (
            self.update,
            self.norm,
            self.obs,
            self.stat,
            self.label,
            self.train,
            self.back,
        )
        self.stepped: set[str] = set()
        self.observed: set[int] = set()
        self.any_observed = False
        self.stats: Stats = {}
        self.labels: Labels = {}
        self.totals: dict[str, float] = {}
        self.moves: list[float] = []
        self.initial: dict[str, Any] | None = None  # the first weight norms, once settled
        self.raw_updates: list[tuple[int, dict[str, float]]] = []  # before `initial` settled
        self.logged = False  # the training loss is the logged one (train_loss_values)
        # settled reference losses (REFERENCES) at the stats' steps: (against, step) -> value
        self.roots: dict[tuple[str, int], float | None] = {}
        self.by_step: list[tuple[int, dict[int, dict[str, float]]]] = []  # settled stats
        self.targets: dict[int, Targets] = {}
        self.shares: dict[tuple[tuple[int, ...], bool, str], _Share] = {}

    def inputs(self, tl: TimelineView) -> Inputs:
        if not fresh(self, tl):
            self.__init__()  # an earlier step was rewritten: parse everything again
        up, up_new = self.update.read(tl)
        for _, upd in up:
            self.stepped.update(n for n, v in (upd or {}).items() if v)
        norm, norm_new = self.norm.read(tl)
        if self.initial is None and norm:
            self.initial = norm[0][1] or {}
        self.raw_updates.extend(up)
        if self.initial is not None:
            for s, upd in self.raw_updates:
                m = move_of(s, upd or {}, self.initial)
                if m is not None:
                    self.moves.append(m)
            self.raw_updates = []
        ob, ob_new = self.obs.read(tl)
        for _, sites in ob:
            self.any_observed = True
            self.observed.update(sites or ())
        st, st_new = self.stat.read(tl)
        for s, values in st:
            parsed = parse_stats(values)
            self.by_step.append((s, parsed))
            for site, d in parsed.items():
                self.stats.setdefault(site, []).append((s, d))
                self.targets.setdefault(site, Targets()).add_stats(d)
        lab, lab_new = self.label.read(tl)
        for _, values in lab:
            for site, hist in parse_labels(values).items():
                self.labels.setdefault(site, []).append(hist)
                self.targets.setdefault(site, Targets()).add_hist(hist)
            for key, v in (values or {}).items():
                self.totals[key] = self.totals.get(key, 0.0) + float(v)
        self._read_losses(tl)
        return self._with_newest(tl, up_new, norm_new, ob_new, st_new, lab_new)

    def _read_losses(self, tl: TimelineView) -> None:
        """Advance the loss readers (their settled steps date the cached roots)."""
        train, train_new = self.train.read(tl)
        self.back.read(tl)
        if (train or train_new) and not self.logged:
            self.logged = True  # the logged loss is judged from now on: roots read again
            self.roots, self.shares = {}, {}

    def _readers_of(self, against: str) -> tuple[Reader, ...]:
        if against == "pass":
            return (self.back,)
        if against == "sum":
            return (self.train, self.back)
        return (self.train,) if self.logged else (self.back,)

    def _settled(self, step: int, against: str) -> bool:
        """No more values can come for `step` in the signals `against` reads."""
        return all(r.done is not None and step <= r.done for r in self._readers_of(against))

    def _root(self, tl: TimelineView, step: int, against: str = "loss") -> float | None:
        key = (against, step)
        if key in self.roots:
            return self.roots[key]
        if against == "pass":
            passes = tl.at(self.back.name, step) or ()
            root = float(passes[-1]) if passes else None
        elif against == "sum":
            # the logged loss as a sum over the step's backward passes (the Hugging Face
            # Trainer adds up its micro-batches' losses): per pass, to compare with one call
            passes = len(tl.at(self.back.name, step) or ())
            logged = step_mean(tl.at(self.train.name, step)) if self.logged else None
            root = logged / passes if logged is not None and passes >= 2 else None
        else:
            reader = self.train if self.logged else self.back
            root = step_mean(tl.at(reader.name, step))
        if self._settled(step, against):
            self.roots[key] = root  # settled: no more values for that step
        return root

    def _with_newest(self, tl, up_new, norm_new, ob_new, st_new, lab_new) -> Inputs:
        """The settled inputs plus the newest step of each signal (copies where it adds)."""
        stepped = self.stepped
        new_names = {n for _, upd in up_new for n, v in (upd or {}).items() if v}
        if not new_names <= stepped:
            stepped = stepped | new_names
        moves = self.moves
        initial = self.initial
        if initial is None and norm_new:
            initial = norm_new[0][1] or {}
        if initial is not None:
            extra = [move_of(s, u or {}, initial) for s, u in self.raw_updates + up_new]
            extra = [m for m in extra if m is not None]
            if extra:
                moves = moves + extra
        observed, any_observed = self.observed, self.any_observed
        for _, sites in ob_new:
            any_observed = True
            if not set(sites or ()) <= observed:
                observed = observed | set(sites or ())
        stats, targets = self.stats, self.targets
        for s, values in st_new:
            stats, targets = dict(stats), dict(targets)
            for site, d in parse_stats(values).items():
                stats[site] = [*stats.get(site, []), (s, d)]
                targets[site] = targets[site].copy() if site in targets else Targets()
                targets[site].add_stats(d)
        labels, totals = self.labels, self.totals
        for _, values in lab_new:
            labels, totals, targets = dict(labels), dict(totals), dict(targets)
            for site, hist in parse_labels(values).items():
                labels[site] = [*labels.get(site, []), hist]
                targets[site] = targets[site].copy() if site in targets else Targets()
                targets[site].add_hist(hist)
            for key, v in (values or {}).items():
                totals[key] = totals.get(key, 0.0) + float(v)
        newest = [(s, parse_stats(values)) for s, values in st_new]

        def share(sites: tuple[int, ...], per_target: bool, against: str = "loss") -> float | None:
            return self._share(tl, sites, per_target, newest, against)

        return Inputs(
            stepped,
            observed,
            any_observed,
            stats,
            labels,
            totals,
            moves,
            targets,
            share,
            self.logged,
        )

    def _share(
        self,
        tl: TimelineView,
        sites: tuple[int, ...],
        per_target: bool,
        newest: list[tuple[int, dict[int, dict[str, float]]]],
        against: str = "loss",
    ) -> float | None:
        """Inputs.share: the steps whose reference loss is settled folded in for good."""
        cache = self.shares.setdefault((sites, per_target, against), _Share())
        while cache.folded < len(self.by_step):
            step, parsed = self.by_step[cache.folded]
            if not self._settled(step, against):
                break  # that step's loss may still be written
            cache.fold(parsed, sites, per_target, self._root(tl, step, against), keep=True)
            cache.folded += 1
        rest = self.by_step[cache.folded :] + newest
        added = [
            cache.fold(parsed, sites, per_target, self._root(tl, step, against), keep=False)
            for step, parsed in rest
        ]
        summed = cache.summed or any(a[1] for a in added)
        ratios = [a[0] for a in added if a[0] is not None]
        for r in ratios:
            cache.ratios.add(r)
        try:
            if per_target and not summed:
                return None
            return cache.ratios.median() if len(cache.ratios) >= 3 else None
        finally:
            for r in ratios:
                cache.ratios.remove(r)


class _Share:
    """The ratios of one (sites, per_target) share over the folded steps."""

    def __init__(self) -> None:
        self.folded = 0
        self.ratios = SortedWindow()
        self.summed = False

    def fold(
        self,
        parsed: dict[int, dict[str, float]],
        sites: tuple[int, ...],
        per_target: bool,
        root: float | None,
        keep: bool,
    ) -> tuple[float | None, bool]:
        """One step's ratio (or None) and whether a summed loss was taken per target; kept
        for good when `keep`."""
        seen, summed = None, False
        for site in sites:  # summed in the sites' order, as _objective._share did
            d = parsed.get(site)
            if d is None or "loss" not in d:
                continue
            loss = d["loss"]
            if per_target and "n_valid" in d:
                if d["n_valid"] <= 0:
                    continue  # no valid target: no mean to compare (NaN in the program too)
                loss, summed = loss / d["n_valid"], True
            seen = (0.0 if seen is None else seen) + loss
        ratio = None
        if seen is not None and root and math.isfinite(root) and math.isfinite(seen):
            ratio = seen / root
        if keep:
            self.summed = self.summed or summed
            if ratio is not None:
                self.ratios.add(ratio)
        return ratio, summed
