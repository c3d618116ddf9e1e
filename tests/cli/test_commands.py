"""`traindoctor rules | explain | report` and the one-line usage errors (exit code 4)."""

from __future__ import annotations

import re

import pytest

from traindoctor.cli import ExitCode, main

from .conftest import run_all, td, write

USAGE = int(ExitCode.USAGE_ERROR)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("commands")
    quiet = tmp_path_factory.mktemp("no_training")
    write(quiet, "hello.py", 'print("no training here")\n')
    return run_all(
        {
            "rules": lambda: td(cwd, "rules"),
            "explain_code": lambda: td(cwd, "explain", "TD102"),
            "explain_unknown": lambda: td(cwd, "explain", "TD999"),
            "run_missing": lambda: td(cwd, "run", "does_not_exist.py"),
            "no_training": lambda: td(quiet, "run", "hello.py"),
        }
    )


def assert_one_line_usage_error(r, *needles: str) -> None:
    assert r.rc == USAGE, r
    assert r.stdout == "", r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r
    assert lines[0].startswith("traindoctor: error: "), r
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], r


def test_rules_lists_the_catalog(results):
    r = results["rules"]
    assert r.rc == 0, r
    rows = [line for line in r.stdout.splitlines() if re.match(r"^TD\d{3}\s", line)]
    assert len(rows) >= 11, r
    codes = [row.split()[0] for row in rows]
    assert codes == sorted(set(codes))
    assert any(row.split()[:2] == ["TD102", "params-without-grad"] for row in rows)


def test_explain_prints_the_sections(results):
    r = results["explain_code"]
    assert r.rc == 0, r
    for section in ("Why it matters", "Example", "Fix"):
        assert section in r.stdout, section
    assert "params-without-grad" in r.stdout


def test_explain_by_name_is_the_same_text(results, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", "params-without-grad"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == results["explain_code"].stdout


def test_explain_unknown_code(results):
    assert_one_line_usage_error(results["explain_unknown"], "TD999", "TD102", "traindoctor rules")


def test_run_missing_script(results):
    r = results["run_missing"]
    assert_one_line_usage_error(r, "does_not_exist.py")
    assert not (r.cwd / "traindoctor-runs").exists()


def test_a_script_that_trains_nothing_gets_no_false_findings(results):
    r = results["no_training"]
    assert r.rc == 0, r
    assert "no training here" in r.stdout
    data = r.findings()
    assert data["findings"] == [], data
    assert data["run"]["observed"] is False
    assert "saw no training" in r.report_md()


# -- more usage errors, in-process: the same main() the console script calls, without paying
# for a fresh interpreter each time --------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--max-steps", "0", "train.py"], "--max-steps"),
        (["run"], "pass a script"),
        (["run", "--bogus", "train.py"], "--bogus"),
        (["run", "-m", "no_such_module_xyz"], "no_such_module_xyz"),
        (["explain"], "CODE"),
        (["no-such-command"], "no-such-command"),
        (["report", "empty"], "has no findings.json"),
        (["report", "corrupt"], "findings.json"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_4(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "findings.json").write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == USAGE
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("traindoctor: error: "), err
    assert needle in lines[0]
    assert not (tmp_path / "traindoctor-runs").exists()
