"""Command line: traindoctor run | check | report | explain | rules | demo."""

from __future__ import annotations

import contextlib
import enum
import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import UsageError


class ExitCode(enum.IntEnum):
    #: the run is healthy, or no finding reaches --fail-on (the script's own code passes through)
    OK = 0
    #: a finding at or above --fail-on exists (unlike pytest, where 3 is an internal error)
    FINDINGS = 3
    #: bad command-line input
    USAGE_ERROR = 4
    #: traindoctor itself failed outside the user's script
    INTERNAL_ERROR = 5
    #: the script was interrupted (SIGINT/SIGTERM); the report was still written
    INTERRUPTED = 130


RUN_CONTEXT = {"ignore_unknown_options": True, "allow_interspersed_args": False}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="traindoctor")
def cli() -> None:
    """traindoctor: find out why a PyTorch training run is not learning."""


def _run_options(f):
    f = click.option("--json", "as_json", is_flag=True, help="Print findings.json to stdout.")(f)
    f = click.option(
        "--fail-on",
        type=click.Choice(["error", "warning"]),
        default=None,
        help="Exit with code 3 when a finding of this severity (or worse) exists.",
    )(f)
    f = click.option(
        "--out",
        "out_dir",
        default="traindoctor-runs",
        show_default=True,
        help="Directory for run reports.",
    )(f)
    f = click.option("-m", "module", default=None, help="Run a module, like `python -m`.")(f)
    f = click.argument("args", nargs=-1, type=click.UNPROCESSED)(f)
    f = click.argument("target", required=False)(f)
    return f


@cli.command(context_settings=RUN_CONTEXT)
@_run_options
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="End the run cleanly after N optimizer steps (the report is still written).",
)
def run(target, args, module, out_dir, fail_on, as_json, max_steps) -> None:
    """Run a training script unchanged with traindoctor attached:

    traindoctor run train.py --epochs 3       traindoctor run -m mypkg.train
    """
    _do_run(target, args, module, out_dir, fail_on, as_json, max_steps)


@cli.command(context_settings=RUN_CONTEXT)
@_run_options
@click.option("--max-steps", type=click.IntRange(min=1), default=20, show_default=True)
def check(target, args, module, out_dir, fail_on, as_json, max_steps) -> None:
    """Run a script for a few optimizer steps (default 20) and report: a quick preflight."""
    _do_run(target, args, module, out_dir, fail_on, as_json, max_steps)


def _do_run(target, args, module, out_dir, fail_on, as_json, max_steps) -> None:
    from .integrations.runner import run_target

    args = list(args)
    if module and target:
        args = [target, *args]
    name = module or target
    if not name:
        _usage("pass a script to run, e.g. `traindoctor run train.py`, or a module with -m")
    redirect = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    try:
        with redirect:
            result = run_target(
                name,
                args,
                module=bool(module),
                out_dir=out_dir,
                max_steps=max_steps,
                console=True,
            )
    except UsageError as e:
        _usage(str(e))
    report = result.report
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    if result.exception is not None and not isinstance(result.exception, KeyboardInterrupt):
        import traceback

        if not isinstance(result.exception, SystemExit):
            traceback.print_exception(result.exception, file=sys.stderr)
    if fail_on and _crosses(report, fail_on):
        sys.exit(ExitCode.FINDINGS)
    sys.exit(result.script_exit_code)


def _crosses(report, fail_on: str) -> bool:
    sev = {f.severity.value for f in report.findings}
    return "error" in sev or (fail_on == "warning" and "warning" in sev)


@cli.command(name="rules")
@click.option("--json", "as_json", is_flag=True)
def rules_cmd(as_json: bool) -> None:
    """List every rule: code, name, severity and one line."""
    from .rules._registry import all_rules

    rules = all_rules()
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rules], indent=2))
        return
    for r in rules:
        click.echo(f"{r.code}  {r.name:<36} {r.severity.value:<8} {r.summary}")


@cli.command()
@click.argument("code")
@click.option("--json", "as_json", is_flag=True)
def explain(code: str, as_json: bool) -> None:
    """Print a rule's documentation (Why it matters, Example, Fix)."""
    from .rules._registry import resolve

    try:
        r = resolve(code)
    except UsageError as e:
        _usage(str(e))
    click.echo(json.dumps(r.to_json(), indent=2) if as_json else r.explain())


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--rediagnose",
    is_flag=True,
    help="Re-run the rules on timeline.jsonl instead of reading findings.json.",
)
def report(run_dir: Path, as_json: bool, rediagnose: bool) -> None:
    """Re-render a run directory written by `run` or `doc.close()`."""
    from .report import load_run, write_run
    from .report.console import print_report

    try:
        rep = load_run(run_dir)
    except UsageError as e:
        _usage(str(e))
    except (ValueError, json.JSONDecodeError) as e:
        _usage(f"{run_dir}/findings.json is not a traindoctor report ({e}); pass a run directory")
    if rediagnose:
        rep = _rediagnose(run_dir, rep)
        write_run(rep)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
    else:
        print_report(rep)


def _rediagnose(run_dir: Path, rep):
    from .findings import rank
    from .rules._registry import all_rules
    from .timeline import Timeline

    path = run_dir / "timeline.jsonl"
    if not path.is_file():
        _usage(f"{run_dir} has no timeline.jsonl to re-diagnose; pass a complete run directory")
    tl = Timeline.from_jsonl(path)
    found = []
    for r in all_rules():
        found.extend(r.run(tl.view(r)))
    rep.findings = rank(found)
    rep.timeline = tl
    return rep


@cli.command()
@click.option("--out", "out_dir", default="traindoctor-runs", show_default=True)
@click.option("--only", multiple=True, help="Run only these scenarios (by name).")
def demo(out_dir: str, only: tuple[str, ...]) -> None:
    """Train small models with real bugs and show what traindoctor finds."""
    from .scenarios.demo import run_demo

    try:
        run_demo(out_dir=out_dir, only=list(only))
    except UsageError as e:
        _usage(str(e))


def _usage(message: str) -> None:
    click.echo(f"traindoctor: error: {message}", err=True)
    sys.exit(ExitCode.USAGE_ERROR)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
