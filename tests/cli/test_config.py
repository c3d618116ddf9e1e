"""Configuring rules: `[tool.traindoctor]` in pyproject.toml, `--select/--extend-select/--ignore/
--option/--config-file/--no-config` on `traindoctor run/check`, and `td.watch(select=, ignore=)`
over the file; each bad input a one-line usage error (exit code 4) before the script starts."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import traindoctor as td
from traindoctor import config
from traindoctor.cli import ExitCode, main
from traindoctor.errors import UsageError
from traindoctor.rules import all_rules

from .conftest import run_all, write
from .conftest import td as td_cli

USAGE = int(ExitCode.USAGE_ERROR)

# A real bug: the gradients are never zeroed (TD106, an error), 30 steps.
BUGGY = """
import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
for step in range(30):
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()          # bug: no zero_grad
    opt.step()
"""

IGNORE_TD106 = """
[project]
name = "demo"

[tool.traindoctor]
ignore = ["TD106"]
fail-on = "error"
out = "reports"
"""


def _project(folder: Path, pyproject: str | None) -> Path:
    """A project folder: pyproject.toml at its root, the script in sub/ (found by searching up)."""
    write(folder, "sub/train.py", BUGGY)
    if pyproject is not None:
        write(folder, "pyproject.toml", pyproject)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    ignoring = {name: _project(mk(name), IGNORE_TD106) for name in ("file", "extend", "no_config")}
    check = _project(mk("check"), "[tool.traindoctor]\ncheck-steps = 5\n")
    opt = "[tool.traindoctor.rules.TD106]\nmin-observations = 100\n"
    options = {name: _project(mk(name), opt) for name in ("option", "option_cli")}
    return run_all(
        {
            "file": lambda: td_cli(ignoring["file"], "run", "sub/train.py"),
            "extend": lambda: td_cli(
                ignoring["extend"], "run", "--extend-select", "TD106", "sub/train.py"
            ),
            "no_config": lambda: td_cli(
                ignoring["no_config"], "run", "--no-config", "sub/train.py"
            ),
            "check_select": lambda: td_cli(check, "check", "--select", "TD1", "sub/train.py"),
            "option": lambda: td_cli(options["option"], "run", "sub/train.py"),
            "option_cli": lambda: td_cli(
                options["option_cli"], "run", "--option", "TD106.min_observations=2", "sub/train.py"
            ),
        }
    )


# -- the command line on a real buggy script ----------------------------------------------------
def test_pyproject_ignore_out_and_fail_on_apply(runs):
    r = runs["file"]
    assert r.rc == 0, r  # fail-on = "error", but the only error (TD106) is ignored
    assert "TD106" not in r.codes("reports"), r
    assert not (r.cwd / "traindoctor-runs").exists()  # out = "reports", beside pyproject.toml


def test_cli_extend_select_overrides_the_file_ignore(runs):
    r = runs["extend"]
    assert "TD106" in r.codes("reports"), r
    assert r.rc == ExitCode.FINDINGS, r  # fail-on from pyproject.toml


def test_no_config_reads_no_file(runs):
    r = runs["no_config"]
    assert r.rc == 0, r  # no fail-on
    assert "TD106" in r.codes(), r  # default out, every rule
    assert not (r.cwd / "reports").exists()


def test_check_select_and_check_steps(runs):
    r = runs["check_select"]
    data = r.findings()
    assert data["steps"] == 5, r  # check-steps from pyproject.toml
    codes = r.codes()
    assert "TD106" in codes and all(c.startswith("TD1") for c in codes), codes
    assert r.rc == 0, r


def test_rule_option_from_the_file_and_over_it(runs):
    assert "TD106" not in runs["option"].codes(), runs["option"]  # min-observations = 100
    r = runs["option_cli"]
    assert "TD106" in r.codes(), r  # --option TD106.min_observations=2 over the file's 100


# -- discovery ----------------------------------------------------------------------------------
def test_nearest_pyproject_with_the_table_wins(tmp_path):
    write(tmp_path, "pyproject.toml", '[tool.traindoctor]\nselect = ["TD1"]\n')
    write(tmp_path, "a/pyproject.toml", '[project]\nname = "a"\n')  # no table: passed over
    write(tmp_path, "a/b/pyproject.toml", '[tool.traindoctor]\nignore = ["TD5"]\n')
    (tmp_path / "a/b/c").mkdir()
    assert config.find_pyproject(tmp_path / "a/b/c") == (tmp_path / "a/b/pyproject.toml").resolve()
    assert config.find_pyproject(tmp_path / "a") == (tmp_path / "pyproject.toml").resolve()
    assert config.discover(tmp_path / "a").layers == [config.Layer(select=("TD1",))]


def test_rule_tables_alone_count_as_the_table(tmp_path):
    write(tmp_path, "pyproject.toml", "[tool.traindoctor.rules.TD210]\nmin_steps = 20\n")
    assert config.discover(tmp_path).options == {"TD210": {"min_steps": 20}}


def test_no_pyproject_is_no_configuration(tmp_path):
    settings = config.discover(tmp_path)
    if settings.path is None:  # (unless a folder above the temp dir has a table)
        assert [r.code for r in settings.rules()] == [r.code for r in all_rules()]


# -- precedence and selection -------------------------------------------------------------------
def _codes(settings: config.Settings) -> list[str]:
    return [r.code for r in settings.rules()]


def test_selection_is_ruff_like():
    all_codes = [r.code for r in all_rules()]
    file = config.Settings(layers=[config.Layer(select=("TD1",), ignore=("TD106",))])
    assert "TD106" not in _codes(file) and all(c.startswith("TD1") for c in _codes(file))
    # within one source the more specific code wins, and ignore wins a tie
    one = config.Settings(layers=[config.Layer(extend_select=("TD102",), ignore=("TD1",))])
    assert "TD102" in _codes(one) and "TD101" not in _codes(one)
    tie = config.Settings(layers=[config.Layer(select=("TD102",), ignore=("TD102",))])
    assert _codes(tie) == []
    # the command line over the file: a later select replaces, extend-select adds back
    assert _codes(file.then(config.Layer(select=("TD106",)))) == ["TD106"]
    assert "TD106" in _codes(file.then(config.Layer(extend_select=("TD106",))))
    more = file.then(config.Layer(ignore=("TD101",)))
    assert "TD101" not in _codes(more) and "TD102" in _codes(more)
    assert _codes(config.Settings()) == all_codes


def test_cli_options_merge_over_the_file_option_by_option():
    file = config.Settings(options={"TD210": {"min_steps": 20, "diverge_factor": 3.0}})
    both = file.then(config.Layer(), config.cli_options(["TD210.min_steps=7"]))
    rule = next(r for r in both.rules() if r.code == "TD210")
    assert dict(rule.settings) == {"min_steps": 7, "diverge_factor": 3.0}


def test_cli_flags_take_comma_separated_codes_prefixes_and_names():
    layer = config.cli_layer(["TD1,TD210", "dead-relu"], ["TD4"], ["td106"])
    assert layer == config.Layer(
        select=("TD1", "TD210", "TD303"), extend_select=("TD4",), ignore=("TD106",)
    )
    assert config.cli_layer([], [], []) == config.Layer()


def test_parse_option_types():
    assert config.parse_option("TD210.min_steps=20") == ("TD210", "min_steps", 20)
    assert config.parse_option("loss-spike-or-divergence.diverge-factor=2") == (
        "TD210",
        "diverge_factor",
        2.0,
    )


# -- watch() --------------------------------------------------------------------------------------
def _train_without_zero_grad(doc_args: dict):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    with td.watch(model, opt, console=False, **doc_args) as doc:
        for _ in range(12):
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return doc


def test_watch_reads_the_pyproject_of_the_working_directory(tmp_path, monkeypatch):
    write(
        tmp_path,
        "pyproject.toml",
        '[tool.traindoctor]\nselect = ["TD1"]\nout = "runs"\n'
        "[tool.traindoctor.rules.TD106]\nmin_observations = 100\n",
    )
    (tmp_path / "nested").mkdir()
    monkeypatch.chdir(tmp_path / "nested")
    doc = _train_without_zero_grad({})
    assert all(r.code.startswith("TD1") for r in doc.rules)
    assert "TD106" not in [f.code for f in doc.report.findings]  # the file's option
    assert doc.report.run_dir.parent == tmp_path / "runs"  # `out`, beside pyproject.toml
    # watch()'s arguments over the file: select replaces it (the option still applies)
    doc = _train_without_zero_grad({"select": ["TD106", "TD2"], "out_dir": "mine"})
    assert {r.code[:3] for r in doc.rules} == {"TD1", "TD2"}
    assert doc.report.run_dir.parent == Path("mine")
    assert dict(next(r for r in doc.rules if r.code == "TD106").settings) == {
        "min_observations": 100
    }


def test_watch_ignore_over_the_file_and_findings(tmp_path, monkeypatch):
    write(tmp_path, "pyproject.toml", '[tool.traindoctor]\nextend-select = ["TD106"]\n')
    monkeypatch.chdir(tmp_path)
    assert "TD106" in [f.code for f in _train_without_zero_grad({}).report.findings]
    doc = _train_without_zero_grad({"ignore": ["TD106"]})
    assert "TD106" not in [r.code for r in doc.rules]
    assert "TD106" not in [f.code for f in doc.report.findings]


def test_watch_bad_pyproject_is_a_usage_error(tmp_path, monkeypatch):
    write(tmp_path, "pyproject.toml", '[tool.traindoctor]\nignore = ["TD9999"]\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        UsageError, match=r"pyproject.toml \[tool.traindoctor\] ignore got 'TD9999'"
    ):
        _train_without_zero_grad({})


# -- errors -------------------------------------------------------------------------------------
BAD_FILES = [
    ('select = ["TD999"]', "select got 'TD999', which matches no rule"),
    ('ignore = ["XX1"]', "ignore got 'XX1', which is not a rule code"),
    ('select = "TD1"', "takes a list of rule codes, got the string 'TD1'; pass ['TD1']"),
    ("extend-select = [1]", "got 1 (int) among the codes"),
    ("selcet = []", "unknown key 'selcet'; did you mean 'select'?"),
    ("max-steps = 5", "never cut short by a config file"),
    ('fail-on = "info"', "fail-on got 'info' (str); pass one of: 'error', 'warning'"),
    ("out = 3", "out got 3 (int); pass a directory path"),
    ("check-steps = 0", "check-steps got 0 (int); pass a whole number"),
    ("rules = 3", "rules got 3 (int); per-rule options are tables"),
    ("rules.TD999 = {}", "unknown rule 'TD999'"),
    ("rules.TD210 = 5", "rules.TD210 got 5 (int); pass a table of that rule's options"),
    ("rules.TD210.windo = 5", "TD210 (loss-spike-or-divergence) has no option 'windo'"),
    ("rules.TD210.min_stepz = 5", "did you mean 'min_steps'?"),
    ("rules.TD101.x = 1", "TD101 (loss-not-differentiable) has no options"),
    (
        'rules.TD210.min_steps = "5"',
        "rules.TD210.min_steps got '5' (str); pass a whole number >= 0",
    ),
    ("rules.TD210.min_steps = -1", "got -1 (int); pass a whole number >= 0 (default 10"),
    ("rules.TD210.min_steps = 2.5", "got 2.5 (float); pass a whole number"),
    ("rules.TD210.diverge_factor = nan", "got nan (float); pass a number >= 0"),
    ("rules.TD210.diverge_factor = true", "got True; pass a number >= 0"),
    ("select = [", "is not valid TOML"),
]


@pytest.mark.parametrize(("body", "needle"), BAD_FILES, ids=[b for b, _ in BAD_FILES])
def test_bad_pyproject_is_one_line_naming_the_file(tmp_path, body, needle):
    write(tmp_path, "pyproject.toml", f"[tool.traindoctor]\n{body}\n")
    with pytest.raises(UsageError) as exc:
        config.discover(tmp_path)
    message = str(exc.value)
    assert "\n" not in message
    assert needle in message, message
    assert "pyproject.toml" in message


def _main(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert out == ""
    return exc.value.code, err


BAD_FLAGS = [
    (["--select", "TD999"], "--select got 'TD999', which matches no rule"),
    (["--ignore", "TD1,X7"], "--ignore got 'X7', which is not a rule code"),
    (["--extend-select", "TD1,,TD2"], "--extend-select got an empty code"),
    (["--option", "TD210"], "--option takes RULE.OPTION=VALUE, got 'TD210'"),
    (["--option", "TD210.min_steps"], "--option takes RULE.OPTION=VALUE"),
    (["--option", "TD210.min_steps="], "--option takes RULE.OPTION=VALUE"),
    (["--option", "TD999.x=1"], "unknown rule 'TD999'"),
    (["--option", "TD210.window=5"], "has no option 'window'; its options: min_steps"),
    (["--option", "TD210.min_steps=abc"], "got 'abc' (str); pass a whole number >= 0"),
    (["--option", "TD210.diverge_factor=inf"], "got inf (float); pass a number >= 0"),
    (["--no-config", "--config-file", "x.toml"], "--no-config and --config-file"),
    (["--config-file", "missing.toml"], "config file 'missing.toml' is not found"),
    (["--config-file", "bare/pyproject.toml"], "has no [tool.traindoctor] table"),
    (["--config-file", "bad.toml"], "bad.toml has an unknown key 'ignroe'"),
]


@pytest.mark.parametrize(("flags", "needle"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
@pytest.mark.parametrize("command", ["run", "check"])
def test_bad_flags_are_one_line_exit_4(tmp_path, monkeypatch, capsys, command, flags, needle):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "train.py", BUGGY)
    write(tmp_path, "bare/pyproject.toml", '[project]\nname = "x"\n')
    write(tmp_path, "bad.toml", 'ignroe = ["TD1"]\n')
    code, err = _main([command, *flags, "train.py"], capsys)
    assert code == USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("traindoctor: error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "traindoctor-runs").exists()  # before the script ran


def test_a_bad_pyproject_stops_the_cli_before_the_script(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "pyproject.toml", '[tool.traindoctor]\nignore = ["TD1000"]\n')
    write(tmp_path, "sub/train.py", "raise SystemExit('the script ran')\n")
    code, err = _main(["run", "sub/train.py"], capsys)
    assert code == USAGE
    assert "[tool.traindoctor] ignore got 'TD1000'" in err and "the script ran" not in err
    # --no-config runs it without reading the file
    with pytest.raises(SystemExit) as exc:
        main(["run", "--no-config", "sub/train.py"])
    assert exc.value.code == 1 and "the script ran" in capsys.readouterr().err


def test_an_out_that_is_a_file_names_the_setting(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "pyproject.toml", '[tool.traindoctor]\nout = "afile"\n')
    write(tmp_path, "afile", "not a folder\n")
    write(tmp_path, "train.py", BUGGY)
    code, err = _main(["run", "train.py"], capsys)
    assert code == USAGE
    assert "pyproject.toml [tool.traindoctor] out got" in err and "is a file" in err, err
    with pytest.raises(UsageError, match=r"\[tool.traindoctor\] out got .* is a file"):
        _train_without_zero_grad({})


def test_config_file_flag_reads_a_plain_toml(tmp_path):
    write(tmp_path, "ci.toml", 'select = ["TD2"]\n[rules.TD210]\nmin_steps = 3\n')
    settings = config.load(tmp_path / "ci.toml")
    assert settings.layers == [config.Layer(select=("TD2",))]
    assert settings.options == {"TD210": {"min_steps": 3}}


# -- Python 3.10: no tomllib ---------------------------------------------------------------------
def _without_tomllib(monkeypatch, tomli: object | None) -> None:
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` raises
    monkeypatch.setitem(sys.modules, "tomli", tomli)


def test_without_tomllib_tomli_reads_it(tmp_path, monkeypatch):
    import tomllib

    fake = types.ModuleType("tomli")
    fake.loads = tomllib.loads  # tomli's API is tomllib's
    _without_tomllib(monkeypatch, fake)
    write(tmp_path, "pyproject.toml", '[tool.traindoctor]\nignore = ["TD5"]\n')
    assert config.discover(tmp_path).layers == [config.Layer(ignore=("TD5",))]


def test_without_tomllib_or_tomli_a_table_is_a_clear_error(tmp_path, monkeypatch):
    _without_tomllib(monkeypatch, None)
    write(tmp_path, "pyproject.toml", '[project]\nname = "x"\n\n[tool.traindoctor]\nignore = []\n')
    with pytest.raises(UsageError, match="no tomllib .* `pip install tomli`, or pass --no-config"):
        config.discover(tmp_path)
    # a pyproject.toml without the table is no error: there is nothing of ours to read
    write(tmp_path, "other/pyproject.toml", '[project]\nname = "traindoctor-user"\n')
    assert config.find_pyproject(tmp_path / "other") == (tmp_path / "pyproject.toml").resolve()


def test_explain_says_how_to_set_an_option(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "TD210"])
    out = capsys.readouterr().out
    assert "--option TD210.min_steps=VALUE" in out
    assert "[tool.traindoctor.rules.TD210]" in out
