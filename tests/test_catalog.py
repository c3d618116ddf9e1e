"""The rule catalog's invariants (STYLE.md, "Docs and catalog tests"): ruff's CI scripts as tests."""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import pytest

import traindoctor.probes  # noqa: F401  (importing the probes registers every signal)
from tests._rule_reads import VIEW_NAMES, module_reads
from traindoctor.rules import CATALOG, _registry, all_rules, get_rule, resolve
from traindoctor.rules._registry import REQUIRED_SECTIONS
from traindoctor.schema import EVENTS, FACTS, SIGNALS, signal_of

RULES_DIR = Path(_registry.__file__).parent
FAMILY_FOLDERS = {
    "grad_flow": "1",
    "numerics": "2",
    "loss_path": "3",
    "eval_hygiene": "4",
    "setup": "5",
    "distributed": "6",
    "experiments": "7",
}
RULES = all_rules()
IDS = [r.code for r in RULES]


def _module_path(r) -> Path:
    return Path(inspect.getsourcefile(r.func))


def test_catalog_is_not_empty_and_each_module_registers_one_rule():
    assert len(RULES) >= 11
    modules = [r.func.__module__ for r in RULES]
    assert sorted(modules) == sorted(m.__name__ for m in CATALOG)


def test_every_rule_file_is_in_the_catalog():
    files = {
        p.relative_to(RULES_DIR).with_suffix("").as_posix().replace("/", ".")
        for folder in FAMILY_FOLDERS
        for p in (RULES_DIR / folder).glob("*.py")
        if not p.name.startswith("_")
    }
    listed = {m.__name__.removeprefix("traindoctor.rules.") for m in CATALOG}
    assert files == listed


def test_codes_are_unique_and_well_formed():
    assert len(set(IDS)) == len(IDS)
    for code in IDS:
        assert re.fullmatch(r"TD[1-7]\d{2}", code), code


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_family_digit_matches_the_folder(r):
    folder = _module_path(r).parent.name
    assert folder in FAMILY_FOLDERS, f"{r.code} lives in unknown family folder {folder!r}"
    assert r.code[2] == FAMILY_FOLDERS[folder]


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_name_is_kebab_case_and_matches_the_file(r):
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", r.name), r.name
    assert r.name == _module_path(r).stem.replace("_", "-")
    assert r.name == r.func.__name__.replace("_", "-")
    assert len(set(r.name for r in RULES)) == len(RULES)


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_docstring_has_the_required_sections_in_order(r):
    doc = r.doc
    positions = []
    for section in REQUIRED_SECTIONS:
        lines = [i for i, line in enumerate(doc.splitlines()) if line.strip() == section]
        assert len(lines) == 1, f"{r.code}: section {section!r} must appear once"
        positions.append(lines[0])
    assert positions == sorted(positions), f"{r.code}: sections out of order"
    # Each section has text; Example and Fix hold a python snippet.
    parts = re.split(r"^## .*$", doc, flags=re.M)[1:]
    assert all(p.strip() for p in parts), f"{r.code}: an empty section"
    for section in ("## Example", "## Fix"):
        body = doc.split(section, 1)[1].split("\n## ", 1)[0]
        assert "```python" in body, f"{r.code}: {section} needs a ```python snippet"


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_requires_are_registered_signals(r):
    unknown = [s for s in r.requires if s not in SIGNALS]
    assert not unknown, f"{r.code} requires unregistered signals {unknown}"


def test_every_probe_signal_is_registered():
    for cls in traindoctor.probes.PROBES:
        for s in cls.provides:
            assert s in SIGNALS, (cls.__name__, s)


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_every_signal_a_rule_reads_is_in_requires(r):
    reads = module_reads(_module_path(r))
    names = {signal_of(s) for s in reads.signals}
    names |= {signal_of(p.rstrip(".")) for p in reads.signal_prefixes}
    assert names <= set(r.requires), f"{r.code} reads undeclared signals {names - set(r.requires)}"


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_every_event_and_fact_a_rule_reads_is_declared(r):
    # The rule function and the private helpers it calls, walked (tests/_rule_reads.py); reads
    # by a computed name are checked at run time by the strict view of testing.run_rule.
    reads = module_reads(_module_path(r))
    assert reads.events <= set(r.events), (
        f"{r.code} reads undeclared events {reads.events - set(r.events)}"
    )
    assert reads.facts <= set(r.facts), (
        f"{r.code} reads undeclared facts {reads.facts - set(r.facts)}"
    )


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_every_declared_read_is_in_the_schema(r):
    assert set(r.requires) <= set(SIGNALS), set(r.requires) - set(SIGNALS)
    assert set(r.events) <= set(EVENTS), set(r.events) - set(EVENTS)
    assert set(r.facts) <= set(FACTS), set(r.facts) - set(FACTS)


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_every_rule_declares_what_it_reads(r):
    # A rule that declares nothing would be judged (and read as healthy) whatever failed.
    assert r.requires or r.events or r.facts, f"{r.code} declares no input"


def _payload_keys(kind: str) -> set[str]:
    payload = EVENTS[kind].type
    return set(payload.__required_keys__) | set(payload.__optional_keys__)


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_event_payload_keys_a_rule_reads_are_declared(r):
    reads = module_reads(_module_path(r))
    for kind, keys in reads.payload.items():
        undeclared = keys - _payload_keys(kind)
        assert not undeclared, (
            f"{r.code} reads {sorted(undeclared)} of {kind!r} events: add to schema.py"
        )


def test_rules_call_the_view_tl_or_view():
    # The AST walk recognises reads by the receiver's name: keep it to these two.
    for path in sorted(RULES_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.FunctionDef):
                for a in node.args.args:
                    ann = ast.unparse(a.annotation) if a.annotation else ""
                    if ann.endswith("TimelineView"):
                        assert a.arg in VIEW_NAMES, f"{path}:{node.lineno} names its view {a.arg!r}"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    sorted(RULES_DIR.rglob("*.py")),
    ids=lambda p: p.relative_to(RULES_DIR).as_posix(),
)
def test_no_rule_module_imports_torch(path):
    bad = [n for n in _imports(path) if n == "torch" or n.startswith("torch.")]
    assert not bad, f"{path} imports {bad}: rules must stay torch-free"


@pytest.mark.parametrize("name", ["findings.py", "timeline.py"])
def test_modules_rules_depend_on_are_torch_free(name):
    path = RULES_DIR.parent / name
    bad = [n for n in _imports(path) if n == "torch" or n.startswith("torch.")]
    assert not bad


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_options_are_keyword_only_with_defaults(r):
    params = list(inspect.signature(r.func).parameters.values())
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD  # the timeline view
    if r.state is not None:  # an incremental rule's state (rules/_incremental.py)
        assert params[1].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        params = params[1:]
    for p in params[1:]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{r.code}: option {p.name}"
        assert p.default is not inspect.Parameter.empty, f"{r.code}: option {p.name}"


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_explain_text_renders_every_section(r):
    text = r.explain()
    assert text.startswith(f"# {r.name} ({r.code})\n")
    assert f"Severity: {r.severity.value}" in text
    assert r.family in text
    assert r.summary in text
    for section in REQUIRED_SECTIONS:
        assert section in text
    if r.options:
        assert "## Options" in text
        for name, default in r.options.items():
            assert f"`{name}` = {default!r}" in text
    else:
        assert "## Options" not in text


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_explain_json_has_every_key(r):
    data = json.loads(json.dumps(r.to_json()))
    assert {
        "code",
        "name",
        "family",
        "severity",
        "status",
        "since",
        "requires",
        "options",
        "explanation",
        "source",
    } <= set(data)
    assert (data["code"], data["name"], data["severity"]) == (r.code, r.name, r.severity.value)
    assert data["requires"] == list(r.requires)
    assert data["options"] == r.options
    for section in REQUIRED_SECTIONS:
        assert section in data["explanation"]
    src = Path(data["source"]["file"])
    assert src == _module_path(r)
    line = src.read_text("utf-8").splitlines()[data["source"]["line"] - 1]
    assert line.startswith(("@rule(", f"def {r.func.__name__}("))


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_lookup_by_code_and_name(r):
    assert get_rule(r.code) is r
    assert get_rule(r.code.lower()) is r
    assert resolve(r.name) is r
    assert resolve(r.code) is r


def test_registration_rejects_bad_metadata():
    with pytest.raises(ValueError, match="TD1xx"):
        _registry.rule(code="XX101", name="bad", severity=RULES[0].severity, summary="s")
    with pytest.raises(ValueError, match="kebab"):
        _registry.rule(code="TD198", name="Bad_Name", severity=RULES[0].severity, summary="s")


def test_readme_rule_table_lists_every_rule_once():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (TD\d{3}) \| ([a-z0-9-]+) \|", readme, flags=re.M)
    assert sorted(code for code, _ in rows) == sorted(IDS)
    assert all(get_rule(code).name == name for code, name in rows)
