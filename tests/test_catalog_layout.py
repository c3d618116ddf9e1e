"""Each rule code has its own test module (issue 14: "combined test files hide codes").

`tests/rules/test_<code>_<rule_name>.py` is a code's one home module. Beside it, a code may have
integration-specific modules, `test_<code>_<integration>.py` with <integration> one of
src/traindoctor/integrations/ (a framework's facts worded by the rule itself, as issue 14 point 3
asks), and nothing else: no module names two codes or none. Shared fixtures live in private
`tests/rules/_*.py` modules.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import traindoctor.integrations
from traindoctor.rules import all_rules, get_rule

TESTS = Path(__file__).parent / "rules"
RULES = {r.code.lower(): r.name.replace("-", "_") for r in all_rules()}
INTEGRATIONS = {
    p.stem
    for p in Path(traindoctor.integrations.__file__).parent.glob("*.py")
    if not p.name.startswith("_")
}
MODULE = re.compile(r"test_(td\d{3})_(\w+)\.py")


def _modules() -> list[str]:
    return sorted(p.name for p in TESTS.glob("test_*.py"))


def test_every_code_has_exactly_one_home_module():
    names = set(_modules())
    missing = [f"test_{c}_{n}.py" for c, n in RULES.items() if f"test_{c}_{n}.py" not in names]
    assert not missing, f"rules without their test module in tests/rules/: {missing}"


def test_every_rule_test_module_belongs_to_one_code():
    strays = []
    for name in _modules():
        m = MODULE.fullmatch(name)
        if m is None or m[1] not in RULES or re.match(r"td\d{3}_", m[2]):
            strays.append(name)  # no code, an unknown one, or two codes
        elif m[2] != RULES[m[1]] and m[2] not in INTEGRATIONS:
            strays.append(name)  # a second module for the code that is not an integration's
    assert not strays, (
        f"tests/rules/ modules must be test_<code>_<rule_name>.py (or _<integration>.py): {strays}"
    )


def test_paths_named_in_rule_test_docstrings_exist():
    # A test module that lists its rule's parts (TD503's) must not point at moved files.
    root = TESTS.parent.parent
    missing = []
    for p in TESTS.glob("test_*.py"):
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        for path in re.findall(r"\b(?:src|tests)/[\w/]+\.py\b", doc):
            if not (root / path).is_file():
                missing.append(f"{p.name}: {path}")
    assert not missing, missing


def test_td503_rule_and_its_test_module_point_at_each_other():
    rule = inspect.getmodule(get_rule("TD503").func)
    assert "tests/rules/test_td503_lr_schedule_anomaly.py" in (rule.__doc__ or "")
    doc = (TESTS / "test_td503_lr_schedule_anomaly.py").read_text()
    assert "src/traindoctor/rules/setup/lr_schedule_anomaly.py" in doc
