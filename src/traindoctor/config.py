"""Which rules run, and with which options: `[tool.traindoctor]` in pyproject.toml, the command
line's `--select/--extend-select/--ignore/--option`, and `watch(select=..., ignore=...)`.

Rule selection works as ruff's does. Each source, in order (pyproject.toml, then the command
line or watch()'s arguments), is applied to the set of rules that the previous one left (all
rules at first): `select`, when given, replaces the set; `extend-select` adds to it; `ignore`
removes from it. Within one source the most specific code or prefix decides (`ignore = ["TD1"]`
with `extend-select = ["TD102"]` keeps TD102), and `ignore` wins a tie. Per-rule options merge
option by option, the command line's over pyproject.toml's.

No torch here: the command line reads and checks its configuration before the script starts.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._validate import check_codes, show
from .errors import UsageError

TABLE = "[tool.traindoctor]"
# The keys of [tool.traindoctor] (kebab-case, as ruff's), besides the `rules` sub-table.
KEYS = (
    "select",
    "extend-select",
    "ignore",
    "fail-on",
    "out",
    "check-steps",
    "output-format",
    "rules",
)
FAIL_ON = ("error", "warning")
DEFAULT_OUT = "traindoctor-runs"


class _Default(str):
    """`watch(out_dir=...)`'s default, told apart from the same path passed on purpose (`is`):
    [tool.traindoctor]'s `out` replaces only the default."""


DEFAULT_OUT_DIR = _Default(DEFAULT_OUT)
DEFAULT_CHECK_STEPS = 20
# `[tool.traindoctor]` (or `[tool.traindoctor.rules.TD210]`) as a table header, seen without a
# TOML parser: which pyproject.toml files are ours, when Python < 3.11 has no tomllib.
_HEADER = re.compile(r'^\s*\[\s*"?tool"?\s*\.\s*"?traindoctor"?\s*[\].]', re.MULTILINE)


@dataclass(frozen=True)
class Layer:
    """One source's rule selection; `select=None` keeps what earlier sources selected."""

    select: tuple[str, ...] | None = None
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.select is not None or bool(self.extend_select or self.ignore)


@dataclass
class Settings:
    """The configuration of one run: where it came from, the rule selection layers in order,
    per-rule options and the command-line defaults that pyproject.toml may set."""

    path: Path | None = None
    layers: list[Layer] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_on: str | None = None
    out: Path | None = None
    check_steps: int | None = None
    output_format: str | None = None

    def then(
        self, layer: Layer, options: Mapping[str, Mapping[str, Any]] | None = None
    ) -> Settings:
        """These settings with a later (overriding) source applied on top."""
        merged = {code: dict(opts) for code, opts in self.options.items()}
        for code, opts in (options or {}).items():
            merged.setdefault(code, {}).update(opts)
        return Settings(
            path=self.path,
            layers=[*self.layers, layer] if layer else list(self.layers),
            options=merged,
            fail_on=self.fail_on,
            out=self.out,
            check_steps=self.check_steps,
            output_format=self.output_format,
        )

    def rules(self) -> list[Any]:
        """The selected rules, in code order, with their options set."""
        from .rules import all_rules

        everything = all_rules()
        enabled = {r.code for r in everything}
        for layer in self.layers:
            enabled = apply(layer, enabled, [r.code for r in everything])
        return [
            r.configured(**self.options[r.code]) if self.options.get(r.code) else r
            for r in everything
            if r.code in enabled
        ]

    def describe(self) -> dict[str, Any]:
        """What the run directory records (timeline facts) so that `report --rediagnose` judges
        the run with the same rules and options."""
        return {
            "file": str(self.path) if self.path else None,
            "layers": [
                {
                    "select": list(x.select) if x.select is not None else None,
                    "extend_select": list(x.extend_select),
                    "ignore": list(x.ignore),
                }
                for x in self.layers
            ],
            "options": {c: dict(o) for c, o in sorted(self.options.items()) if o},
            "rules": [r.code for r in self.rules()],
        }

    @classmethod
    def recorded(cls, facts: Mapping[str, Any]) -> Settings:
        """The settings a run directory's timeline recorded (`describe()`); options that this
        version's rules no longer take are dropped."""
        from .rules import get_rule

        layers = [
            Layer(
                select=tuple(x["select"]) if x.get("select") is not None else None,
                extend_select=tuple(x.get("extend_select", ())),
                ignore=tuple(x.get("ignore", ())),
            )
            for x in facts.get("layers", ())
        ]
        options = {}
        for code, opts in (facts.get("options") or {}).items():
            rule = get_rule(code)
            if rule is not None:
                options[rule.code] = {k: v for k, v in opts.items() if k in rule.options}
        path = facts.get("file")
        return cls(path=Path(path) if path else None, layers=layers, options=options)


def apply(layer: Layer, enabled: set[str], codes: Iterable[str]) -> set[str]:
    """The rule codes enabled after `layer`: per code, the longest matching selector decides
    (ignore wins a tie); a code no selector matches keeps its state, or is dropped when the
    layer has a `select`."""
    out = set()
    positive = (*(layer.select or ()), *layer.extend_select)
    for code in codes:
        best: tuple[int, bool] | None = None
        for prefix in positive:
            if code.startswith(prefix):
                best = max(best or (-1, False), (len(prefix), False))
        for prefix in layer.ignore:
            if code.startswith(prefix):
                best = max(best or (-1, False), (len(prefix), True))
        kept = layer.select is None and code in enabled
        if kept if best is None else not best[1]:
            out.add(code)
    return out


# -- pyproject.toml ---------------------------------------------------------------------------


def find_pyproject(start: str | Path) -> Path | None:
    """The nearest pyproject.toml with a [tool.traindoctor] table, in `start` or a folder above
    it (as ruff finds its own table: a pyproject.toml without one is passed over)."""
    folder = Path(start).resolve()
    if not folder.is_dir():
        folder = folder.parent
    for candidate in (folder, *folder.parents):
        path = candidate / "pyproject.toml"
        if path.is_file() and _has_table(path):
            return path
    return None


def _has_table(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    if "traindoctor" not in text:
        return False
    if _HEADER.search(text):
        return True
    toml = _toml()
    if toml is None:
        return False
    try:
        data = toml.loads(text)
    except Exception:  # noqa: BLE001  (someone else's broken file, without our table)
        return False
    return isinstance(data.get("tool"), dict) and "traindoctor" in data["tool"]


def _toml() -> Any:
    try:
        import tomllib  # Python >= 3.11

        return tomllib
    except ModuleNotFoundError:
        pass
    try:
        import tomli

        return tomli
    except ModuleNotFoundError:
        return None


def load(path: str | Path) -> Settings:
    """Read and check a configuration file: a pyproject.toml's [tool.traindoctor] table, or any
    other .toml file whose top level is that table (as ruff reads ruff.toml)."""
    path = Path(path)
    is_pyproject = path.name == "pyproject.toml"
    where = f"{path} {TABLE}" if is_pyproject else str(path)
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not found"
        raise UsageError(
            f"config file {str(path)!r} is {kind}; pass a pyproject.toml with a {TABLE} table "
            "or a .toml file of traindoctor settings"
        )
    toml = _toml()
    if toml is None:
        raise UsageError(
            f"cannot read {where}: this Python has no tomllib (3.11+) and the tomli package is "
            "not installed; `pip install tomli`, or pass --no-config to run without it"
        )
    try:
        data = toml.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}; pass a readable UTF-8 TOML file") from None
    except Exception as e:  # noqa: BLE001  (TOMLDecodeError of tomllib or tomli)
        message = str(e).replace("\n", " ")
        raise UsageError(f"{path} is not valid TOML ({message}); fix the file") from None
    if is_pyproject:
        tool = data.get("tool")
        if not isinstance(tool, dict) or "traindoctor" not in tool:
            raise UsageError(
                f"{path} has no {TABLE} table; add one, or pass a .toml file of traindoctor "
                "settings"
            )
        data = tool["traindoctor"]
        if not isinstance(data, dict):
            raise UsageError(f"{path}: tool.traindoctor must be a table, got {show(data)}")
    return from_table(data, path, where)


def from_table(table: Mapping[str, Any], path: Path | None, where: str) -> Settings:
    """Settings from the [tool.traindoctor] table's contents, each key checked."""
    for key in table:
        if key not in KEYS:
            near = difflib.get_close_matches(str(key).replace("_", "-"), KEYS, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            if key in ("max-steps", "max_steps"):
                hint = (
                    "a full `traindoctor run` is never cut short by a config file: pass "
                    "--max-steps on the command line, or set check-steps for `traindoctor "
                    "check`; "
                )
            raise UsageError(
                f"{where} has an unknown key {key!r}; {hint}the keys are: " + ", ".join(KEYS)
            )
    layer = Layer(
        select=(
            check_codes("", "select", table["select"], where=f"{where} select")
            if "select" in table
            else None
        ),
        extend_select=check_codes(
            "", "extend-select", table.get("extend-select"), where=f"{where} extend-select"
        ),
        ignore=check_codes("", "ignore", table.get("ignore"), where=f"{where} ignore"),
    )
    fail_on = table.get("fail-on")
    if fail_on is not None and fail_on not in FAIL_ON:
        raise UsageError(
            f"{where} fail-on got {show(fail_on)}; pass one of: "
            + ", ".join(repr(c) for c in FAIL_ON)
        )
    out = None
    if "out" in table:
        value = table["out"]
        if not isinstance(value, str) or not value.strip():
            raise UsageError(
                f"{where} out got {show(value)}; pass a directory path as a string, e.g. "
                f"out = {DEFAULT_OUT!r} (relative to the pyproject.toml's folder)"
            )
        out = Path(value) if path is None else path.parent / value
    steps = table.get("check-steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UsageError(
            f"{where} check-steps got {show(steps)}; pass a whole number of optimizer steps "
            f">= 1 for `traindoctor check` (default {DEFAULT_CHECK_STEPS})"
        )
    output_format = None
    if "output-format" in table:
        from .report import formats  # names only: no renderer, no torch

        output_format = formats.check(table["output-format"], where=f"{where} output-format")
    rules = table.get("rules", {})
    if not isinstance(rules, dict):
        raise UsageError(
            f"{where} rules got {show(rules)}; per-rule options are tables, e.g. "
            "[tool.traindoctor.rules.TD210] with min_steps = 20"
        )
    options: dict[str, dict[str, Any]] = {}
    for key, values in rules.items():
        rule = _rule(key, f"{where} rules.{key}")
        if not isinstance(values, dict):
            raise UsageError(
                f"{where} rules.{key} got {show(values)}; pass a table of that rule's options, "
                f"e.g. [tool.traindoctor.rules.{rule.code}] then {_example(rule)}"
            )
        for name, value in values.items():
            option = check_option_name(rule, str(name), f"{where} rules.{key}")
            checked = check_option_value(rule, option, value, f"{where} rules.{key}.{name}")
            options.setdefault(rule.code, {})[option] = checked
    return Settings(
        path=path,
        layers=[layer] if layer else [],
        options=options,
        fail_on=fail_on,
        out=out,
        check_steps=steps,
        output_format=output_format,
    )


def discover(start: str | Path) -> Settings:
    """The settings of the nearest pyproject.toml above `start`, or none."""
    path = find_pyproject(start)
    return load(path) if path is not None else Settings()


# -- per-rule options -------------------------------------------------------------------------


def _rule(key: str, where: str) -> Any:
    from .rules import resolve

    try:
        return resolve(str(key))
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def _example(rule: Any) -> str:
    if not rule.options:
        return "(it has no options)"
    name, default = next(iter(rule.options.items()))
    return f"{name} = {default!r}"


def check_option_name(rule: Any, name: str, where: str) -> str:
    """The option's parameter name (kebab-case accepted), or a UsageError naming the options."""
    option = name.strip().replace("-", "_")
    if option in rule.options:
        return option
    if not rule.options:
        raise UsageError(
            f"{where}: {rule.code} ({rule.name}) has no options, got {name!r}; "
            f"`traindoctor rules --json` lists which rules have options"
        )
    near = difflib.get_close_matches(option, list(rule.options), n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    listed = ", ".join(f"{k} (default {v!r})" for k, v in rule.options.items())
    raise UsageError(
        f"{where}: {rule.code} ({rule.name}) has no option {name!r}; {hint}its options: "
        f"{listed} (`traindoctor explain {rule.code}`)"
    )


def check_option_value(rule: Any, option: str, value: Any, where: str) -> Any:
    """A value of the option's type (that of its default): a whole number >= 0 for an int
    option, a finite number >= 0 for a float one, true/false for a bool one."""
    default = rule.options[option]
    hint = f"(default {default!r}, `traindoctor explain {rule.code}`)"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"{where} got {show(value)}; pass true or false {hint}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"{where} got {show(value)}; pass a whole number >= 0 {hint}")
        return value
    if isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise UsageError(f"{where} got {show(value)}; pass a number >= 0 {hint}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise UsageError(f"{where} got {show(value)}; pass a string {hint}")
    return value


def parse_option(text: str, flag: str = "--option") -> tuple[str, str, Any]:
    """`TD210.min_steps=20` (or `loss-spike-or-divergence.min-steps=20`) from the command line,
    as (code, option, value), checked."""
    example = f"e.g. {flag} TD210.min_steps=20"
    rule_part, eq, raw = text.partition("=")
    rule_key, dot, name = rule_part.strip().rpartition(".")
    if not eq or not dot or not rule_key or not name or not raw.strip():
        raise UsageError(
            f"{flag} takes RULE.OPTION=VALUE, got {text!r}; pass {example} "
            "(`traindoctor explain CODE` lists a rule's options)"
        )
    where = f"{flag} {text}"
    rule = _rule(rule_key, where)
    option = check_option_name(rule, name, where)
    default = rule.options[option]
    raw = raw.strip()
    value: Any = raw
    try:
        if isinstance(default, bool):
            value = {"true": True, "false": False}.get(raw.lower(), raw)
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
    except ValueError:
        value = raw
    return rule.code, option, check_option_value(rule, option, value, where)


def cli_layer(select: Iterable[str], extend_select: Iterable[str], ignore: Iterable[str]) -> Layer:
    """The command line's selection: each flag repeatable, each value comma-separated."""

    def codes(flag: str, values: Iterable[str]) -> tuple[str, ...]:
        items = [c.strip() for v in values for c in v.split(",")]
        if any(not c for c in items):
            raise UsageError(
                f"{flag} got an empty code in {','.join(values)!r}; pass codes or prefixes "
                f"separated by commas, e.g. {flag} TD102,TD5"
            )
        return check_codes("", flag, items, where=flag)

    select = list(select)
    return Layer(
        select=codes("--select", select) if select else None,
        extend_select=codes("--extend-select", extend_select),
        ignore=codes("--ignore", ignore),
    )


def cli_options(options: Iterable[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for text in options:
        code, option, value = parse_option(text)
        out.setdefault(code, {})[option] = value
    return out


# -- watch() ----------------------------------------------------------------------------------


def for_watch(
    select: tuple[str, ...], ignore: tuple[str, ...], start: str | Path | None = None
) -> Settings:
    """watch()'s settings: the nearest pyproject.toml above the working directory, then its
    `select`/`ignore` arguments (checked codes; an empty `select` keeps pyproject.toml's)."""
    base = discover(Path.cwd() if start is None else start)
    return base.then(Layer(select=tuple(select) or None, ignore=tuple(ignore)))
