"""Checks of the options every public entry point shares (those of `traindoctor.watch`, the
framework callbacks and the command line), each failure a one-line `UsageError` that names the
bad value, its type and what to pass instead.

No torch here: the command line checks `--out` without importing it. The entry points call
these through `traindoctor.options.Options.checked`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import UsageError

MODES = ("watch", "zero-code", "lightning", "transformers", "ultralytics")
FRAMEWORKS = ("plain", "lightning", "transformers", "accelerate", "ultralytics")
CODE_RE = re.compile(r"^TD\d{0,3}$")
# Experiment trackers traindoctor posts to (integrations/trackers/), and the variable that
# sets `export` where the code leaves the default ("none" turns every tracker off).
TRACKERS = ("wandb", "tensorboard", "mlflow")
EXPORT_ENV = "TRAINDOCTOR_EXPORT"


def show(value: Any) -> str:
    """A value as an error message names it: its repr (short) and its type."""
    kind = type(value).__name__
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, str | bytes | int | float | os.PathLike):
        text = repr(value)
        if len(text) > 60:
            text = text[:57] + "..."
        return f"{text} ({kind})"
    if isinstance(value, list | tuple | set | dict) and len(repr(value)) <= 60:
        return f"{value!r} ({kind})"
    return f"a {kind}"


def check_budget(caller: str, budget: Any) -> float:
    ok = isinstance(budget, int | float) and not isinstance(budget, bool)
    if not ok or not 0 < budget <= 1:  # NaN fails the comparison too
        raise UsageError(
            f"{caller}(budget=...) got {show(budget)}; pass the overhead allowed, as a fraction "
            "of step time in (0, 1], e.g. budget=0.03"
        )
    return float(budget)


def check_console(caller: str, console: Any) -> bool:
    if not isinstance(console, bool):
        raise UsageError(
            f"{caller}(console=...) got {show(console)}; pass True to print the summary at "
            "the end, or False"
        )
    return console


def check_max_steps(caller: str, max_steps: Any) -> int | None:
    if max_steps is None:
        return None
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise UsageError(
            f"{caller}(max_steps=...) got {show(max_steps)}; pass a whole number of optimizer "
            "steps >= 1, e.g. max_steps=20, or None for no limit"
        )
    return max_steps


def check_choice(caller: str, name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise UsageError(
            f"{caller}({name}=...) got {show(value)}; pass one of: "
            + ", ".join(repr(c) for c in choices)
        )
    return value


def check_out_dir(caller: str, out_dir: Any, flag: str = "out_dir=...") -> Path:
    """The run directories' parent: a directory, or a path that can be created as one."""
    where = f"{caller}({flag})" if caller else flag
    if isinstance(out_dir, bool) or not isinstance(out_dir, str | os.PathLike):
        raise UsageError(
            f"{where} got {show(out_dir)}; pass a directory path (str or Path) "
            "for the run reports, e.g. out_dir='traindoctor-runs'"
        )
    try:
        path = Path(out_dir)
    except TypeError:  # a PathLike whose __fspath__ returns bytes
        raise UsageError(
            f"{where} got {show(out_dir)}; pass a directory path as a str or Path"
        ) from None
    return _check_dir_path(where, path)


def _check_dir_path(where: str, path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"{where} got {str(path)!r}, which is a file, not a directory; pass a directory "
            "for the run reports (it is created if missing), e.g. 'traindoctor-runs'"
        )
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UsageError(
            f"{where} got {str(path)!r}, but {str(existing)!r} is a file, not a directory; "
            "pass a directory path for the run reports, e.g. 'traindoctor-runs'"
        )
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"{where} got {str(path)!r}, but {str(existing)!r} is not writable; pass a "
            "directory you can write to"
        )
    return path


def check_export(caller: str, export: Any) -> str | tuple[str, ...]:
    """`export=`: "auto" (the trackers the script has active), tracker names (a list, or one
    string, comma-separated as on the command line) or None / [] / "none" for none. The
    environment's TRAINDOCTOR_EXPORT replaces "auto", and its "none" turns off any list."""
    value = parse_export(f"{caller}(export=...)", export)
    env = os.environ.get(EXPORT_ENV, "").strip()
    if env:
        from_env = parse_export(f"{EXPORT_ENV}={env!r}", env)
        if value == "auto" or from_env == ():
            return from_env
    return value


def parse_export(where: str, export: Any) -> str | tuple[str, ...]:
    fix = (
        "pass 'auto' (the trackers the script has active, the default), a list of "
        + ", ".join(repr(t) for t in TRACKERS)
        + ", or None (on the command line: none) to post to none"
    )
    if export is None:
        return ()
    if isinstance(export, str):
        items: list[Any] = [i for i in export.replace(" ", ",").split(",") if i]
        if items in ([], ["none"]):
            return ()
        if items == ["auto"]:
            return "auto"
    elif isinstance(export, list | tuple | set | frozenset):
        items = list(export)
    else:
        raise UsageError(f"{where} got {show(export)}; {fix}")
    out: list[str] = []
    for item in items:
        name = item.strip().lower() if isinstance(item, str) else item
        if name not in TRACKERS:
            near = difflib.get_close_matches(str(name), TRACKERS, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise UsageError(f"{where} got {show(item)}, not a tracker; {hint}{fix}")
        if name not in out:
            out.append(name)
    return tuple(out)


def check_codes(caller: str, name: str, codes: Any, where: str | None = None) -> tuple[str, ...]:
    """`select=` / `ignore=`: rule codes or code prefixes (`TD1`), or rule names; returned as
    codes/prefixes, upper case. `where` names the setting in messages instead of
    `caller(name=...)` (a pyproject.toml key, a command-line flag)."""
    at = where or f"{caller}({name}=...)"
    example = f"{name}=['TD102', 'TD5']" if where is None else "['TD102', 'TD5']"
    if codes is None:
        return ()
    if isinstance(codes, str | bytes):
        fix = f"{name}=[{codes!r}]" if where is None else f"[{codes!r}]"
        raise UsageError(f"{at} takes a list of rule codes, got the string {codes!r}; pass {fix}")
    try:
        items = list(codes)
    except TypeError:
        raise UsageError(
            f"{at} takes a list of rule codes, got {show(codes)}; pass e.g. {example}"
        ) from None
    from .rules import all_rules

    rules = all_rules()
    by_name = {r.name: r.code for r in rules}
    out = []
    for item in items:
        if not isinstance(item, str):
            raise UsageError(
                f"{at} got {show(item)} among the codes; pass rule codes as strings, e.g. {example}"
            )
        key = item.strip()
        if key.lower() in by_name:
            out.append(by_name[key.lower()])
            continue
        key = key.upper()
        if not CODE_RE.match(key):
            raise UsageError(
                f"{at} got {item!r}, which is not a rule code; pass codes such "
                f"as 'TD102' or prefixes such as 'TD1' (`traindoctor rules` lists them)"
            )
        if not any(r.code.startswith(key) for r in rules):
            raise UsageError(
                f"{at} got {item!r}, which matches no rule; pass codes such as "
                f"'TD102' or prefixes such as 'TD1' (`traindoctor rules` lists all {len(rules)})"
            )
        out.append(key)
    return tuple(out)


def check_options(caller: str, **options: Any) -> dict[str, Any]:
    """Check the options given (those of `watch`, plus `max_steps`, `mode`, `framework`);
    returns them normalized (select/ignore as tuples of codes)."""
    checks = {
        "out_dir": lambda v: check_out_dir(caller, v),
        "budget": lambda v: check_budget(caller, v),
        "console": lambda v: check_console(caller, v),
        "select": lambda v: check_codes(caller, "select", v),
        "ignore": lambda v: check_codes(caller, "ignore", v),
        "max_steps": lambda v: check_max_steps(caller, v),
        "mode": lambda v: check_choice(caller, "mode", v, MODES),
        "framework": lambda v: check_choice(caller, "framework", v, FRAMEWORKS),
        "export": lambda v: check_export(caller, v),
    }
    out = {}
    for name, value in options.items():
        out[name] = checks[name](value) if name in checks else value
    if "out_dir" in out:
        out["out_dir"] = options["out_dir"]  # as given: Doctor makes its own Path
    return out


def reject_unknown(caller: str, unknown: dict[str, Any], valid: Iterable[str]) -> None:
    """A one-line error for keyword arguments the entry point does not take."""
    if not unknown:
        return
    valid = tuple(valid)
    name, value = next(iter(unknown.items()))
    near = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {near[0]}=...? " if near else ""
    if name == "max_steps":
        hint = "max_steps is an option of `traindoctor run --max-steps`; end your loop yourself. "
    raise UsageError(
        f"{caller}() got an unknown keyword argument {name!r}, value {show(value)}; {hint}"
        "pass only " + ", ".join(f"{v}=" for v in valid)
    )


def reject_positional(caller: str, args: tuple[Any, ...], valid: Iterable[str]) -> None:
    """A one-line error for positional arguments to an entry point that takes keywords only."""
    if not args:
        return
    raise UsageError(
        f"{caller}() takes keyword arguments only, got the positional {show(args[0])}; pass "
        f"them by name, e.g. {caller}(out_dir='traindoctor-runs'); its options: "
        + ", ".join(f"{v}=" for v in valid)
    )
