"""Command line: traindoctor run | check | report | explain | rules | demo."""

from __future__ import annotations

import contextlib
import enum
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

import click

from ._version import __version__
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
    #: the script was interrupted by SIGINT (Ctrl-C); the report was still written.
    #: SIGTERM gives 143 (128 + 15), as a shell reports it.
    INTERRUPTED = 130


RUN_CONTEXT = {"ignore_unknown_options": True, "allow_interspersed_args": False}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="traindoctor")
def cli() -> None:
    """traindoctor: find out why a PyTorch training run is not learning."""


def _run_options(f):
    f = click.option(
        "--no-config",
        is_flag=True,
        help="Ignore [tool.traindoctor] in pyproject.toml.",
    )(f)
    f = click.option(
        "--config-file",
        "config_file",
        default=None,
        metavar="PATH",
        help="Read settings from this pyproject.toml ([tool.traindoctor]) or .toml file instead "
        "of the nearest pyproject.toml.",
    )(f)
    f = click.option(
        "--option",
        "rule_options",
        multiple=True,
        metavar="RULE.OPTION=VALUE",
        help="Set a rule's option, e.g. --option TD210.min_steps=20 (repeatable; `traindoctor "
        "explain CODE` lists a rule's options).",
    )(f)
    f = click.option(
        "--ignore",
        multiple=True,
        metavar="CODES",
        help="Rule codes or prefixes not to run, comma-separated (e.g. TD5,TD207).",
    )(f)
    f = click.option(
        "--extend-select",
        multiple=True,
        metavar="CODES",
        help="Rule codes or prefixes to run on top of those selected.",
    )(f)
    f = click.option(
        "--select",
        multiple=True,
        metavar="CODES",
        help="Run only these rule codes or prefixes, comma-separated (e.g. TD1,TD210).",
    )(f)
    f = click.option(
        "--no-progress",
        is_flag=True,
        help="No live status line on stderr (also TRAINDOCTOR_PROGRESS=0; off when stderr is "
        "not a terminal).",
    )(f)
    f = _output_options(f)
    from .integrations.trackers.cli_option import export_option  # sets TRAINDOCTOR_EXPORT

    f = export_option(f)
    f = click.option(
        "--fail-on",
        type=click.Choice(["error", "warning"]),
        default=None,
        help="Exit with code 3 when a finding of this severity (or worse) exists.",
    )(f)
    f = click.option(
        "--out",
        "out_dir",
        default=None,
        help="Directory for run reports (default: `out` in [tool.traindoctor], else "
        "traindoctor-runs).",
    )(f)
    f = click.option("-m", "module", default=None, help="Run a module, like `python -m`.")(f)
    f = click.argument("args", nargs=-1, type=click.UNPROCESSED)(f)
    f = click.argument("target", required=False)(f)
    return f


def _output_options(f):
    """--output-format, --output-file and --json: the options of every command that prints
    findings (run, check, report)."""
    f = click.option(
        "--output-file",
        "-o",
        "output_file",
        default=None,
        metavar="PATH",
        help="Write the findings to this file instead of stdout.",
    )(f)
    f = click.option(
        "--output-format",
        "output_format",
        default=None,
        metavar="FORMAT",
        help="How to print the findings: full (default), concise, grouped, json, json-lines, "
        "junit, github, gitlab, pylint, azure, sarif (as ruff's). Machine-readable formats "
        "keep stdout for themselves (the script's own stdout goes to stderr).",
    )(f)
    f = click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print findings.json to stdout (= --output-format json).",
    )(f)
    return f


@cli.command(context_settings=RUN_CONTEXT)
@_run_options
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="End the run cleanly after N optimizer steps (the report is still written).",
)
def run(max_steps, **options) -> None:
    """Run a training script unchanged with traindoctor attached:

    traindoctor run train.py --epochs 3       traindoctor run -m mypkg.train

    Options go before the script; everything after it is the script's own argv.

    \b
    Exit codes:
      the script's own   when no finding reaches --fail-on (0 after --max-steps)
      3                  a finding at or above --fail-on (unlike pytest's 3)
      4                  usage error (bad option, missing script or module)
      130 / 143          interrupted by SIGINT / SIGTERM (the report is still written)
    """
    _do_run(max_steps=max_steps, **options)


@cli.command(context_settings=RUN_CONTEXT)
@_run_options
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Optimizer steps to run (default: check-steps in [tool.traindoctor], else 20).",
)
def check(max_steps, **options) -> None:
    """Run a script for a few optimizer steps (default 20) and report: a quick preflight."""
    # Then Karpathy's recipe on a copy of the model (experiments/): overfit one batch, ...
    # unless TRAINDOCTOR_EXPERIMENTS says otherwise.
    from . import experiments

    with experiments.enable(experiments.enabled() or experiments.ENV not in os.environ):
        _do_run(max_steps=max_steps, **options)


def _do_run(
    target,
    args,
    module,
    out_dir,
    fail_on,
    as_json,
    max_steps,
    select=(),
    extend_select=(),
    ignore=(),
    rule_options=(),
    config_file=None,
    no_config=False,
    output_format=None,
    output_file=None,
    no_progress=False,
) -> None:
    args = list(args)
    if module and target:
        args = [target, *args]
    name = module or target
    if not name:
        _usage("pass a script to run, e.g. `traindoctor run train.py`, or a module with -m")
    try:
        command = click.get_current_context().info_name or "run"
        _check_run_input(command, name, bool(module))
        settings = _settings(
            name, bool(module), select, extend_select, ignore, rule_options, config_file, no_config
        )
        out_flag = "--out"
        if out_dir is None and settings.out is not None:
            out_dir, out_flag = str(settings.out), f"{settings.path} [tool.traindoctor] out"
        elif out_dir is None:
            out_dir = "traindoctor-runs"
        if fail_on is None:
            fail_on = settings.fail_on
        if max_steps is None and command == "check":
            max_steps = settings.check_steps or 20
        _check_out_dir(out_dir, out_flag)
        fmt = _output_format(as_json, output_format, settings.output_format)
        _check_output_file(output_file)
    except UsageError as e:
        _usage(str(e))  # before torch is imported: a usage error is instant
    from . import progress
    from .integrations.runner import run_target
    from .report import formats
    from .report.console import print_report

    # A machine-readable format on stdout: stdout carries it alone.
    clean_stdout = formats.is_machine(fmt) and output_file is None
    redirect = _stdout_to_stderr() if clean_stdout else contextlib.nullcontext()
    live = progress.live(progress.wanted(no_progress, clean_stdout))
    try:
        with redirect, live:
            result = run_target(
                name,
                args,
                module=bool(module),
                out_dir=out_dir,
                max_steps=max_steps,
                console=False,
                settings=settings,
                keep_main=True,  # the script's threads and atexit handlers run after it
            )
    except UsageError as e:
        _usage(str(e))
    except Exception as e:  # noqa: BLE001  (the user's script ran inside run_target and is
        # reported there: what reaches here is traindoctor failing around it)
        click.echo(f"traindoctor: internal error: {type(e).__name__}: {e}", err=True)
        sys.exit(ExitCode.INTERNAL_ERROR)
    report = result.report
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit) and not _silent_signal(exc):
        # The user's traceback, as `python train.py` prints it, without traindoctor's frames
        # (a KeyboardInterrupt's too: Ctrl-C or `raise KeyboardInterrupt` prints one plainly),
        # or the script's own sys.excepthook called, as Python calls it (rich, wandb); what
        # it prints goes where the script's output went (stderr when stdout carries --json).
        with _stdout_to_stderr() if clean_stdout else contextlib.nullcontext():
            _uncaught(exc)
    # A rank of a distributed job: rank 0 shows the job's merged report, the others nothing
    # (each rank's own is in its folder; stdout stays one findings.json under --json).
    shown = _job_report(report) if report.rank is not None else report
    # The console summary goes to stderr, unless a human format on stdout replaces it.
    summary = fmt == "full" or formats.is_machine(fmt) or output_file is not None
    with contextlib.suppress(Exception):
        if shown is not None and summary:
            print_report(shown)
    if report.write_error:
        click.echo(f"traindoctor: {report.write_error}", err=True)
    if shown is not None and (fmt != "full" or output_file is not None):
        _emit(shown, fmt, output_file)
    if clean_stdout:
        # The script's non-daemon threads and atexit handlers run after the JSON: what they
        # print goes to stderr, as the rest of its output did.
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            os.dup2(2, 1)
            sys.stdout = sys.stderr
    if result.script_cwd is not None:
        # Where the script left it: its non-daemon threads and atexit handlers run next.
        with contextlib.suppress(OSError):
            os.chdir(result.script_cwd)
    if fail_on and _crosses(report, fail_on):
        sys.exit(ExitCode.FINDINGS)
    sys.exit(result.script_exit_code)


def _output_format(as_json: bool, value: str | None, configured: str | None) -> str:
    """The output format: --output-format (or --json), else [tool.traindoctor]'s, else full."""
    from .report import formats

    if value is not None:
        fmt = formats.check(value)
        if as_json and fmt != "json":
            raise UsageError(
                f"--json and --output-format {value} contradict each other; pass one of them "
                "(--json is --output-format json)"
            )
        return fmt
    if as_json:
        return "json"
    return configured or formats.DEFAULT


def _check_output_file(path: str | None) -> None:
    """--output-file names a file whose folder exists: said before the script starts, not
    after the training."""
    if path is None:
        return
    target = Path(path)
    if not path.strip() or target.is_dir():
        raise UsageError(
            f"--output-file got {path!r}, a directory; pass a file path, e.g. "
            "--output-file traindoctor.sarif"
        )
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(
            f"--output-file {path!r}: the folder {str(folder)!r} does not exist; create it or "
            "pass a file in an existing folder"
        )


def _emit(report, fmt: str, output_file: str | None) -> None:
    """The findings in `fmt`, on stdout or into --output-file. A renderer or a write that
    fails is traindoctor failing (exit 5), said in one line."""
    from .report import formats

    try:
        text = formats.render(fmt, report)
        if output_file is None:
            click.echo(text, nl=False)
            return
        with open(output_file, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as e:
        click.echo(
            f"traindoctor: error: could not write --output-file {output_file}: {e}", err=True
        )
        sys.exit(ExitCode.INTERNAL_ERROR)
    except Exception as e:  # noqa: BLE001  (a renderer bug: one line, not a traceback)
        click.echo(
            f"traindoctor: internal error: rendering {fmt}: {type(e).__name__}: {e}", err=True
        )
        sys.exit(ExitCode.INTERNAL_ERROR)


def _job_report(report):
    """On rank 0 of a distributed job, the job's report as merged at its close (its own where
    the merge could not be written); None on the other ranks."""
    if report.rank != 0:
        return None
    from .report import load_run

    with contextlib.suppress(Exception):
        return load_run(Path(report.run_dir).parent.parent)
    return report


def _settings(name, module, select, extend_select, ignore, rule_options, config_file, no_config):
    """pyproject.toml's [tool.traindoctor] (the nearest above the script's folder, or the
    working directory for -m), then the command line's flags over it (traindoctor.config)."""
    from . import config

    if no_config and config_file:
        raise UsageError(
            "--no-config and --config-file contradict each other; pass one of them, or neither "
            "to read the nearest pyproject.toml"
        )
    if no_config:
        base = config.Settings()
    elif config_file:
        base = config.load(config_file)
    else:
        start = Path.cwd() if module else Path(name).parent
        base = config.discover(start)
    layer = config.cli_layer(select, extend_select, ignore)
    return base.then(layer, config.cli_options(rule_options))


# `traindoctor run`'s own options (those that take a value, then the flags; -m last).
RUN_VALUE_OPTIONS = (
    "--out",
    "--max-steps",
    "--fail-on",
    "--select",
    "--extend-select",
    "--ignore",
    "--option",
    "--config-file",
    "--output-format",
    "--output-file",
    "--export",
    "-m",
)
RUN_FLAGS = ("--json", "--no-config", "--no-progress")
SCRIPT_SUFFIXES = ("", ".py", ".pyw")


def _check_run_input(command: str, name: str, module: bool) -> None:
    """What `run`/`check` can tell is wrong before the script starts: a one-line UsageError."""
    opts = ", ".join((*RUN_VALUE_OPTIONS, *RUN_FLAGS))
    if name.startswith("-"):
        raise UsageError(
            f"traindoctor {command} has no option {name!r}; pass one of {opts} before the script, "
            "and the script's own arguments after it, e.g. `traindoctor run --max-steps 50 "
            "train.py --lr 3`"
        )
    if module:
        if name.endswith(".py") or "/" in name or os.sep in name:
            stem = Path(name).with_suffix("").as_posix().replace("/", ".").strip(".")
            raise UsageError(
                f"-m takes a module name, got the path {name!r}; pass the script itself, "
                f"`traindoctor run {name}`, or its module name, `traindoctor run -m {stem}`"
            )
    else:
        _check_script(Path(name))


def _check_out_dir(out_dir: str, flag: str = "--out") -> None:
    from ._validate import check_out_dir

    check_out_dir("", out_dir, flag=flag)


def _check_script(path: Path) -> None:
    example = "e.g. `traindoctor run train.py --epochs 3`"
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.py"))[:3]
        hint = f" such as {', '.join(inside)}" if inside else ""
        raise UsageError(
            f"{str(path)!r} is a directory, not a script; pass the Python training script "
            f"inside it{hint}, {example}"
        )
    if not path.exists():
        return  # the runner says so, with the same advice
    if path.suffix.lower() == ".ipynb":
        raise UsageError(
            f"{str(path)!r} is a notebook, not a script; export it with `jupyter nbconvert "
            f"--to script {path}` and pass the .py file it writes"
        )
    if path.suffix.lower() not in SCRIPT_SUFFIXES:
        raise UsageError(
            f"{str(path)!r} is not a Python script (a {path.suffix} file); pass the .py "
            f"training script, {example}"
        )
    if not os.access(path, os.R_OK):
        raise UsageError(f"{str(path)!r} is not readable; pass a script you can read")


def _hoist_options(argv: list[str]) -> list[str]:
    """`traindoctor check train.py --fail-on error --output-format github`, as ruff and pytest
    take options anywhere: everything after the script is its own argv, except an option of
    ours that the script cannot take (its name is in neither the script nor a .py file beside
    it), which is moved before the script, with a note on stderr. One the script may take
    stays the script's; `--` ends the search (what follows is the script's)."""
    if len(argv) < 2 or argv[0] not in ("run", "check"):
        return argv
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        name = argv[i].split("=", 1)[0]
        if name == "-m" or argv[i] == "--":
            return argv  # a module (its args are its own), or nothing to look at
        i += 2 if name in (*RUN_VALUE_OPTIONS, "-o") and "=" not in argv[i] else 1
    if i >= len(argv) or not Path(argv[i]).is_file():
        return argv
    script, rest = Path(argv[i]), argv[i + 1 :]
    moved: list[str] = []
    kept: list[str] = []
    j = 0
    while j < len(rest):
        arg = rest[j]
        if arg == "--":
            kept += rest[j:]
            break
        option = arg.split("=", 1)[0]
        ours = option in (*RUN_VALUE_OPTIONS[:-1], *RUN_FLAGS)
        if not ours or _script_mentions(script, option.lstrip("-")):
            kept.append(arg)
            j += 1
            continue
        width = 2 if option in RUN_VALUE_OPTIONS and "=" not in arg and j + 1 < len(rest) else 1
        moved += rest[j : j + width]
        j += width
    if moved:
        click.echo(
            f"traindoctor: {' '.join(moved)} after {script} taken as traindoctor's "
            f"(the script does not take it)",
            err=True,
        )
    return [*argv[:i], *moved, str(script), *kept]


def _script_mentions(script: Path, name: str, limit: int = 300, entries: int = 20000) -> bool:
    """Whether `name` (or its snake_case form) is a word of the script or of a .py file in its
    folder tree (where its argument parser may live). Past `limit` .py files or `entries`
    directory entries (a dataset beside the script), True: the script may well take it."""
    import re

    forms = {name, name.replace("-", "_")}
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(f) for f in forms) + r")(?![\w-])")

    def mentions(path: Path) -> bool:
        with contextlib.suppress(OSError):
            return bool(pattern.search(path.read_text(encoding="utf-8", errors="replace")))
        return True  # unreadable: assume it does

    if mentions(script):
        return True
    files: list[Path] = []
    seen = 0
    for dirpath, dirnames, filenames in os.walk(script.resolve().parent):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "site-packages"]
        seen += len(filenames) + len(dirnames)
        files.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
        if len(files) > limit or seen > entries:
            return True
    return any(mentions(f) for f in files)


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything the script writes to stdout (print, C extensions, child processes) to
    stderr, so that stdout carries findings.json alone."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        saved = None
    try:
        if saved is not None:
            os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.__stdout__.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _silent_signal(exc: BaseException) -> bool:
    """SIGTERM, raised into the script as runner.Terminated: plainly it ends Python silently."""
    return getattr(exc, "signal_name", None) == "SIGTERM"


def _uncaught(exc: BaseException) -> None:
    """What Python does with an exception that ends the script: calls sys.excepthook, the one
    the script installed (rich's, wandb's, a notifier's) if it replaced the default; that hook
    failing is reported as Python reports it, with the original exception."""
    hook = sys.excepthook
    if hook is sys.__excepthook__ or not callable(hook):
        sys.stderr.write(_user_traceback(exc))
        return
    tb = exc.__traceback__
    while tb is not None and _is_runner_frame(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    try:
        hook(type(exc), exc, tb or exc.__traceback__)
    except BaseException as err:  # noqa: BLE001  (Python prints both and goes on exiting)
        sys.stderr.write("Error in sys.excepthook:\n")
        sys.stderr.write("".join(traceback.format_exception(err)))
        sys.stderr.write("\nOriginal exception was:\n")
        sys.stderr.write(_user_traceback(exc))


def _user_traceback(exc: BaseException) -> str:
    """The traceback `python train.py` prints: traindoctor's frames left out (the runner's
    around the script, and the wrappers a loss or hook call passed through)."""
    tb = exc.__traceback__
    while tb is not None and _is_runner_frame(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    te = traceback.TracebackException(type(exc), exc, tb or exc.__traceback__)
    _drop_own_frames(te, set())
    return "".join(te.format())


def _drop_own_frames(te: traceback.TracebackException | None, seen: set[int]) -> None:
    if te is None or id(te) in seen:
        return
    seen.add(id(te))
    kept = [fs for fs in te.stack if not _is_runner_frame(fs.filename)]
    if kept:  # an error raised by traindoctor itself keeps its frames
        te.stack = traceback.StackSummary.from_list(kept)
    for nxt in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        _drop_own_frames(nxt, seen)


def _is_runner_frame(filename: str) -> bool:
    pkg = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(filename).startswith(pkg + os.sep) or filename in (
        "<frozen runpy>",
        runpy.__file__,
    )


def _crosses(report, fail_on: str) -> bool:
    sev = {f.severity.value for f in report.findings}
    return "error" in sev or (fail_on == "warning" and "warning" in sev)


@cli.command(name="rules")
@click.option("--json", "as_json", is_flag=True)
def rules_cmd(as_json: bool) -> None:
    """List every rule: code, name, severity and one line."""
    from .rules import all_rules

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
    from .rules import resolve

    try:
        r = resolve(code)
    except UsageError as e:
        _usage(str(e))
    click.echo(json.dumps(r.to_json(), indent=2) if as_json else r.explain())


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_output_options
@click.option(
    "--rediagnose",
    is_flag=True,
    help="Re-run the rules on timeline.jsonl instead of reading findings.json.",
)
def report(
    run_dir: Path,
    as_json: bool,
    rediagnose: bool,
    output_format: str | None = None,
    output_file: str | None = None,
) -> None:
    """Re-render a run directory written by `run` or `doc.close()` (or re-diagnose the
    timeline of a run that never closed: killed, or still running)."""
    from .report import rerender_run
    from .report.console import print_report

    example = "pass a run directory such as traindoctor-runs/<run-id>/"
    try:
        fmt = _output_format(as_json, output_format, None)
        _check_output_file(output_file)
    except UsageError as e:
        _usage(str(e))
    if not run_dir.exists():
        _usage(f"{str(run_dir)!r} does not exist; {example} written by `traindoctor run`")
    if not run_dir.is_dir():
        _usage(f"{str(run_dir)!r} is a file, not a run directory; {example}")
    from .distributed.merge import is_job_dir

    if is_job_dir(run_dir):
        rep = _job_run(run_dir, rediagnose)
    elif not (run_dir / "findings.json").is_file() and (run_dir / "timeline.jsonl").is_file():
        # The run never closed (killed: SIGKILL, out of memory): its timeline was streamed.
        rep = _unclosed_run(run_dir)
        # No findings.json: the directory stays an unclosed run, re-diagnosed on every call
        # (it may still be running: its timeline.jsonl is left to its writer).
        rerender_run(rep)
    else:
        rep = _closed_run(run_dir, rediagnose)
    if fmt != "full" or output_file is not None:
        _emit(rep, fmt, output_file)
    else:
        from rich.console import Console

        print_report(rep, Console(soft_wrap=False))  # the report is this command's output


def _job_run(job_dir: Path, rediagnose: bool):
    """A distributed job's directory: each rank's report re-rendered (a rank that never
    closed re-diagnosed from its timeline, as for a single run), then merged again."""
    from .distributed.merge import merge, scan, world_size_of, write_job
    from .report import rerender_run

    def unclosed(rank_dir: Path):
        rep = _unclosed_run(rank_dir)
        rerender_run(rep)
        return rep

    world_size = world_size_of(job_dir)
    results = scan(job_dir, world_size, unclosed, lambda d: _closed_run(d, rediagnose))
    rep = merge(job_dir, world_size, results)
    write_job(rep)
    return rep


def _closed_run(run_dir: Path, rediagnose: bool):
    from .report import load_run, rerender_run, write_run

    try:
        rep = load_run(run_dir)
    except UsageError as e:
        _usage(str(e))
    except (ValueError, json.JSONDecodeError) as e:
        _usage(f"{run_dir}/findings.json is not a traindoctor report ({e}); pass a run directory")
    if rediagnose:
        rep = _rediagnose(run_dir, rep)
        write_run(rep)
    else:
        rerender_run(rep)
    return rep


def _unclosed_run(run_dir: Path):
    """A run directory without findings.json: the run was killed before close() (or could
    not write its report). Its streamed timeline is diagnosed as `--rediagnose` does."""
    from .report.model import Report

    rep = _rediagnose(run_dir, Report(findings=[], steps=0, run_dir=run_dir), unclosed=True)
    tl = rep.timeline
    rep.steps = tl.last_step
    rep.framework = str(tl.facts.get("framework") or "plain")
    rep.outcome = {**tl.facts["outcome"], "skipped_rules": tl.facts.get("skipped_rules", [])}
    return rep


def _rediagnose(run_dir: Path, rep, unclosed: bool = False):
    from ._guard import Guard
    from .diagnosis import diagnose
    from .rules import all_rules
    from .timeline import Timeline

    path = run_dir / "timeline.jsonl"
    if not path.is_file():
        _usage(f"{run_dir} has no timeline.jsonl to re-diagnose; pass a complete run directory")
    try:
        tl = Timeline.from_jsonl(path)
    except (ValueError, KeyError, TypeError) as e:
        _usage(f"{path} is not a traindoctor timeline ({e}); pass a complete run directory")
    for note in tl.load_notes:
        click.echo(f"traindoctor: note: {note}", err=True)
    if unclosed and (not tl.ended or not isinstance(tl.facts.get("outcome"), dict)):
        # Before the rules run: the run is over, so they judge it whole, as at close().
        tl.facts["outcome"] = {"ended": "killed", "step": tl.last_step}
    guard = Guard()
    recorded = tl.facts.get("config")
    if isinstance(recorded, dict):  # the rules and options the run was judged with
        from .config import Settings

        rules = Settings.recorded(recorded).rules()
    else:
        rules = all_rules()
    rep.findings = diagnose(tl, rules, guard)
    rep.internal_errors = [e.to_dict() for e in guard.errors]
    rep.timeline = tl
    return rep


@cli.command()
@click.option("--out", "out_dir", default="traindoctor-runs", show_default=True)
@click.option("--only", multiple=True, help="Run only these scenarios (by name).")
def demo(out_dir: str, only: tuple[str, ...]) -> None:
    """Train small models with real bugs and show what traindoctor finds."""
    from .scenarios.demo import run_demo

    try:
        _check_out_dir(out_dir)
        run_demo(out_dir=out_dir, only=list(only))
    except UsageError as e:
        _usage(str(e))


def _usage(message: str) -> None:
    click.echo(f"traindoctor: error: {message}", err=True)
    sys.exit(ExitCode.USAGE_ERROR)


# What to pass, for click's own errors about these parameters (by their Python names).
PARAM_HINTS = {
    "max_steps": "Pass a whole number of optimizer steps >= 1, e.g. --max-steps 20.",
    "fail_on": "Pass --fail-on error or --fail-on warning.",
    "module": "Pass an importable module name, e.g. -m mypackage.train.",
    "out_dir": "Pass a directory for the run reports, e.g. --out traindoctor-runs.",
    "code": "Pass a rule code such as TD102 (`traindoctor rules` lists them).",
    "run_dir": "Pass a run directory, e.g. traindoctor-runs/<run-id>/.",
    "output_file": "Pass a file path, e.g. --output-file traindoctor.sarif.",
    "output_format": "Pass a format, e.g. --output-format github.",
}


def _click_hint(e: click.UsageError) -> str:
    """What to pass instead, for a command-line error that click found."""
    ctx = e.ctx
    if isinstance(e, click.BadParameter) and e.param is not None and e.param.name in PARAM_HINTS:
        return PARAM_HINTS[e.param.name]
    if isinstance(e, click.BadOptionUsage):  # an option without its value
        name = {"-m": "module", "--out": "out_dir"}.get(e.option_name, e.option_name)
        return PARAM_HINTS.get(name.lstrip("-").replace("-", "_"), "")
    if isinstance(e, click.NoSuchOption) and ctx is not None:
        names = [o for p in ctx.command.params for o in p.opts if o.startswith("-")]
        return f"Pass one of: {', '.join(names)}, or --help."
    message = e.format_message()
    if message.startswith("No such command"):
        return f"Pass one of: {', '.join(sorted(cli.commands))}."
    if "unexpected extra argument" in message and ctx is not None:
        args = [p.human_readable_name for p in ctx.command.params if not p.opts[0].startswith("-")]
        return f"Pass {' '.join(args) if args else 'no arguments'} and options only."
    return ""


def main(argv: list[str] | None = None) -> None:
    """Entry point. Bad command lines exit 4 with one line on stderr, like our own usage errors
    (click's default would be 2 and a multi-line usage block)."""
    try:
        argv = _hoist_options(list(sys.argv[1:] if argv is None else argv))
        code = cli.main(args=argv, prog_name="traindoctor", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e), err=True)
        sys.exit(ExitCode.USAGE_ERROR)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "traindoctor"
        message = e.format_message().replace("\n", " ")
        hint = _click_hint(e)
        if hint:
            message = f"{message.rstrip('.')}. {hint}"
        _usage(f"{message} (see `{where} --help`)")
    except click.ClickException as e:
        _usage(e.format_message())
    except click.Abort:
        click.echo("traindoctor: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    sys.exit(code if isinstance(code, int) else ExitCode.OK)


if __name__ == "__main__":
    main()
