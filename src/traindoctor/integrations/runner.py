"""Run a user's script or module as `python script.py` / `python -m module` would, with
traindoctor attached, and always write the report (normal exit, exception, SIGINT, SIGTERM)."""

from __future__ import annotations

import builtins
import contextlib
import importlib.machinery
import os
import runpy
import signal
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..doctor import Doctor
from ..errors import StopTraining, UsageError
from ..options import Options
from ..report.model import Report
from .autopatch import attached


@dataclass
class RunResult:
    report: Report
    script_exit_code: int  # what `python script.py` would have exited with
    exception: BaseException | None
    # The working directory the script left (the report is written from where `run` began;
    # the command line goes back to it for the script's threads and atexit handlers).
    script_cwd: str | None = None


def run_target(
    target: str,
    args: list[str],
    *,
    module: bool = False,
    out_dir: str | Path = "traindoctor-runs",
    max_steps: int | None = None,
    console: bool = True,
    budget: float = 0.03,
    settings: Settings | None = None,
    keep_main: bool = False,
) -> RunResult:
    """`settings` (traindoctor.config: the rules to run, with their options) as the command
    line resolved them from pyproject.toml and its flags; None runs every rule with its
    defaults. `keep_main` (the command line, whose process ends with the script): the
    script's `__main__`, argv and sys.path[0] stay after it returns, as python leaves them for
    its non-daemon threads and atexit handlers (a checkpoint pickled there names
    `__main__.Net`); else they are put back (a caller that goes on, as tests do)."""
    if target.startswith("-"):
        raise UsageError(
            f"unknown option {target!r}; put traindoctor's options before the script and the "
            "script's own arguments after it, e.g. `traindoctor run --max-steps 50 train.py --lr 3`"
        )
    old_argv, old_path0 = sys.argv[:], sys.path[0] if sys.path else None
    if module:
        import importlib.util

        # `python -m` puts the working directory first on sys.path, so that modules and
        # packages there are found; the `traindoctor` entry point's own folder is not.
        _set_path0(os.getcwd())
        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            _set_path0(old_path0)
            raise UsageError(
                f"no module named {target!r}; pass an importable module, e.g. "
                "`traindoctor run -m mypackage.train`"
            )
        script_label = target
    else:
        path = Path(target)
        if not path.is_file():
            raise UsageError(
                f"script {target!r} does not exist; pass the path of a Python training script, "
                "e.g. `traindoctor run train.py --epochs 3`"
            )
        script_label = str(path)
    options = Options.checked(
        "Doctor", budget=budget, max_steps=max_steps, mode="zero-code", console=console
    ).but(out_dir=out_dir)  # --out was checked by the command line
    doctor = Doctor(
        options=options,
        script=script_label,
        rules=settings.rules() if settings is not None else None,
    )
    if settings is not None:
        doctor.timeline.facts["config"] = settings.describe()
    exc: BaseException | None = None
    code = 0
    session = None
    script_cwd: str | None = None
    old_cwd = os.getcwd()
    old_main = sys.modules.get("__main__")
    old_term = _install_sigterm()
    undo_launches = _lightning_launches()
    try:
        with attached(doctor) as session:
            try:
                if module:
                    sys.argv = [target, *args]
                    # (runpy puts __main__ and argv back when the module returns: its
                    # non-daemon threads and atexit handlers then see ours; left)
                    with _threads_as_at_import():
                        runpy.run_module(target, run_name="__main__", alter_sys=True)
                else:
                    _run_path(Path(target), args)
            except SystemExit as e:
                code = _exit_code(e)
                if code != 0:
                    exc = e
            except StopTraining:
                code = 0
            except KeyboardInterrupt as e:
                # 128 + signal number, as a shell reports a process ended by that signal.
                exc, code = e, 128 + int(getattr(e, "signum", signal.SIGINT))
            except BaseException as e:  # noqa: BLE001  (the report must name it)
                exc, code = e, 1
    finally:
        undo_launches()
        if not keep_main:
            sys.argv = old_argv
            _set_path0(old_path0)
            if old_main is not None:
                sys.modules["__main__"] = old_main
        # A script may chdir; the run directory (a relative --out) belongs where `run` started.
        with contextlib.suppress(OSError):
            script_cwd = os.getcwd()
            os.chdir(old_cwd)
    try:
        # A second SIGTERM while the report is written would lose it; the script is done.
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # A Lightning run is watched by its callback's own doctor (closed at the end of fit);
        # this session's doctor saw nothing and writes nothing.
        delegated = session.delegate_report() if session is not None else None
        report = delegated if delegated is not None else doctor.close(exc)
    finally:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, old_term)
    return RunResult(report=report, script_exit_code=code, exception=exc, script_cwd=script_cwd)


def _lightning_launches() -> Callable[[], None]:
    """Lightning's launcher starts its other ranks under `traindoctor run` too (lightning.py's
    zero_code_launches); what undoes it. Never fails the run."""
    try:
        from .lightning import zero_code_launches

        return zero_code_launches()
    except Exception:  # noqa: BLE001  (the rank 0 run goes on; its other ranks unwatched)
        return lambda: None


def _run_path(path: Path, args: list[str]) -> None:
    """Execute like `python path args`: fresh __main__, argv, sys.path[0] = the script's folder."""
    source = path.read_bytes()
    # Python (3.9+) makes the script's __file__ and its tracebacks' paths absolute; argv[0] not.
    absolute = os.path.abspath(path)
    code = compile(source, absolute, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__file__ = absolute
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", absolute)
    main.__cached__ = None  # type: ignore[attr-defined]  (as python sets them for a script)
    main.__annotations__ = {}
    sys.modules["__main__"] = main
    sys.argv = [str(path), *args]
    sys.path[0] = str(path.resolve().parent)
    with _threads_as_at_import():
        exec(code, main.__dict__)


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _threads_as_at_import() -> Any:
    """torch reads OMP_NUM_THREADS / MKL_NUM_THREADS when it is imported; a script that sets
    them before its `import torch` (`os.environ["OMP_NUM_THREADS"] = "1"`, as A3C scripts do)
    gets that many threads plainly, but under `traindoctor run` torch was imported before the
    script began. At the script's first import of torch (builtins.__import__ watched until
    then), a thread count it lowered is applied with torch.set_num_threads, as the import
    would have (a larger one is left: torch caps it at the cores it finds). Never fails the
    script."""
    from .._patching import Patch, acquire, release

    start = {k: os.environ.get(k) for k in _THREAD_VARS}
    done = False

    def make(original: Any) -> Any:
        def importing(name: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal done
            if not done and (name == "torch" or name.startswith("torch.")):
                done = True
                with contextlib.suppress(Exception):
                    release(patch)
                    _apply_thread_vars(start)
            return original(name, *args, **kwargs)

        return importing

    patch = Patch(builtins, "__import__", make)
    acquire(patch)
    try:
        yield
    finally:
        if not done:
            done = True
            release(patch)


def _apply_thread_vars(start: dict[str, str | None]) -> None:
    now = {k: os.environ.get(k) for k in _THREAD_VARS}
    if now == start:
        return
    import torch

    def count(value: str | None) -> int | None:
        try:
            n = int((value or "").split(",")[0])
        except ValueError:
            return None
        return n if n > 0 else None

    wanted = count(now["OMP_NUM_THREADS"])
    if torch.backends.mkl.is_available() and count(now["MKL_NUM_THREADS"]) is not None:
        wanted = count(now["MKL_NUM_THREADS"])
    if wanted is not None and wanted < torch.get_num_threads():
        torch.set_num_threads(wanted)


def _set_path0(entry: str | None) -> None:
    if entry is None:
        return
    if sys.path:
        sys.path[0] = entry
    else:
        sys.path.append(entry)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised into the script like Ctrl-C so that `finally` blocks and the report run."""

    signum = int(signal.SIGTERM)
    signal_name = "SIGTERM"


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


# Lightning's signal connector: while a Trainer runs, its handler takes SIGTERM and calls the
# one it found installed (ours) after its own.
_LIGHTNING_SIGNALS = ("lightning.pytorch.", "pytorch_lightning.")


def _install_sigterm() -> Any:
    """SIGTERM becomes a KeyboardInterrupt-like exception so that `finally` writes the report.

    Not when Lightning's handler calls it: plainly (SIGTERM's default handler) Lightning's
    handler only notes the signal, and its loops stop at the next batch with SIGTERMException
    (a SystemExit: exit status 0, `on_exception` callbacks such as OnExceptionCheckpoint run
    after a whole step). Raised from inside its handler, ours interrupted the running step
    and ended the script with status 1."""

    def on_term(signum: int, frame: Any) -> None:
        caller = sys._getframe(1)
        module = caller.f_globals.get("__name__")
        if (
            isinstance(module, str)
            and module.startswith(_LIGHTNING_SIGNALS)
            and module.endswith(".signal_connector")
        ):
            return  # Lightning stops the run as it does plainly; the report follows
        raise Terminated("SIGTERM")

    try:
        return signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGTERM)
