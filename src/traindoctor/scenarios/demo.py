"""`traindoctor demo`: run every bundled scenario under zero-code mode and show the verdicts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..doctor import Doctor
from ..integrations.autopatch import attached
from . import all_scenarios, get
from ._base import Scenario


def run_scenario(
    scenario: Scenario,
    out_dir: str | Path = "traindoctor-runs",
    watch: bool = False,
    steps: int | None = None,
    console: bool = False,
):
    """Train one scenario with traindoctor attached and return the Report (with the
    experiments on a copy for the scenarios that declare them, as `traindoctor check` runs)."""
    if scenario.experiments:
        from .. import experiments

        with experiments.enable():
            return _run_scenario(scenario, out_dir, watch, steps, console)
    return _run_scenario(scenario, out_dir, watch, steps, console)


def _run_scenario(scenario: Scenario, out_dir, watch: bool, steps: int | None, console: bool):
    torch.manual_seed(0)
    n = steps or scenario.steps
    if watch:
        import traindoctor as td

        docs = []

        def watch_fn(model, optimizer, scaler=None):
            docs.append(td.watch(model, optimizer, scaler, out_dir=out_dir, console=console))
            docs[-1].budget.adaptive = False  # same samples on a busy machine as on an idle one
            return docs[-1]

        try:
            scenario.train(steps=n, watch=watch_fn)
        except BaseException as exc:  # noqa: BLE001  (a crashing scenario still reports)
            if not docs:
                raise
            return docs[-1].close(exc)
        return docs[-1].close()
    doctor = Doctor(out_dir=out_dir, mode="zero-code", console=console, script=scenario.name)
    doctor.budget.adaptive = False
    exc = None
    with attached(doctor):
        try:
            scenario.train(steps=n)
        except Exception as e:  # noqa: BLE001
            exc = e
    return doctor.close(exc)


def verdict_finding(scenario: Scenario, findings: list) -> Any:
    """The finding a buggy scenario is judged by: the first ranked one. For a scenario of the
    experiments on a copy (TD7xx), whose findings sit beside the run's own (which rank first,
    and which the planted bug may also trigger), the first TD7xx finding of the planted code
    when no other TD7xx finding is more severe than it (those the scenario also expects aside),
    else the first TD7xx finding."""
    if not scenario.experiments:
        return findings[0] if findings else None
    also = set(scenario.expect) - {scenario.top}
    seven = [f for f in findings if f.code.startswith("TD7") and f.code not in also]
    if not seven:
        return None
    worst = min(f.severity.rank for f in seven)
    planted = [f for f in seven if f.code == scenario.top and f.severity.rank == worst]
    return planted[0] if planted else seven[0]


def run_demo(out_dir: str = "traindoctor-runs", only: list[str] | None = None) -> int:
    """Print, per scenario, the bug planted, the top finding and the report path.

    Returns how many scenarios did not get the verdict they were built for.
    """
    scenarios = [get(n) for n in only] if only else all_scenarios()
    console = Console(highlight=False)
    console.rule("traindoctor demo: small real training runs, with real bugs planted")
    t0 = time.perf_counter()
    misses = skipped = 0
    for s in scenarios:
        if s.missing:
            console.print(f"[dim]- {s.name}: skipped, needs {', '.join(s.missing)}[/dim]")
            skipped += 1
            continue
        t1 = time.perf_counter()
        # Zero-code mode unless the scenario needs the API (named loss parts, say).
        watch = "zero-code" not in s.modes
        report = _one_thread(run_scenario, s, out_dir=out_dir, watch=watch)
        secs = time.perf_counter() - t1
        flagged = [f for f in report.findings if f.severity.value != "info"]
        # A healthy twin must get no error or warning; a buggy scenario its rule first (some
        # are info by design, e.g. 1-based labels, which healthy token models resemble).
        top = flagged[0] if s.healthy and flagged else None
        if not s.healthy and report.findings:
            top = verdict_finding(s, report.findings)
        ok = (top is None) if s.healthy else (top is not None and top.code == s.top)
        misses += not ok
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        console.print(
            f"{mark} [bold]{s.name}[/bold] [dim]({report.steps} steps, {secs:.1f}s)[/dim]"
        )
        console.print(f"    bug planted   {s.bug or '[dim]none: healthy twin[/dim]'}")
        if top is None:
            console.print("    traindoctor   [green]healthy[/green]")
        else:
            where = f" [dim]({top.where.source})[/dim]" if top.where.source else ""
            console.print(f"    traindoctor   [red]{top.code} {top.name}[/red]{where}: {top.title}")
            if top.cause:
                console.print(f"    cause         {top.cause}")
        if not ok:
            console.print(f"    [yellow]expected {s.top or 'healthy'}[/yellow]")
        console.print(f"    report        [dim]{report.run_dir}/report.md[/dim]")
    ran = len(scenarios) - skipped
    skipped_text = f" ({skipped} skipped: missing libraries)" if skipped else ""
    console.rule(
        f"{ran - misses}/{ran} scenarios diagnosed as planted{skipped_text}, "
        f"in {time.perf_counter() - t0:.1f}s · `traindoctor explain CODE` documents each rule"
    )
    return misses


def _one_thread(fn, *args, **kwargs):
    """Run with one intra-op thread: the scenario models are tiny, and extra threads only make
    them slower on a busy machine. The caller's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(before)
