"""--output-format (as ruff's): each format rendered from a hand-built Report, then the command
line end to end on a buggy and a healthy script (github annotations at the user's line, exit 3
with --fail-on; sarif to a file; junit, gitlab, json-lines from `report DIR`)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.cli.conftest import line_of, run_all, td, write
from traindoctor.config import Layer, from_table
from traindoctor.errors import UsageError
from traindoctor.findings import Finding, Severity, Where
from traindoctor.report import formats
from traindoctor.report.model import Report
from traindoctor.timeline import Timeline


def finding(code="TD102", severity=Severity.ERROR, source="train.py:12", title="no grad", **kw):
    return Finding(
        code=code,
        name=kw.pop("name", "params-without-grad"),
        severity=severity,
        title=title,
        step=kw.pop("step", 3),
        where=Where(module=kw.pop("module", "enc"), source=source),
        cause=kw.pop("cause", "detached"),
        fix=kw.pop("fix", "remove .detach()"),
        **kw,
    )


def report(*findings, rules=None):
    tl = Timeline()
    tl.facts["script"] = "train.py"
    if rules is not None:
        tl.facts["config"] = {"rules": rules}
    return Report(findings=list(findings), steps=20, timeline=tl)


# -- the registry -------------------------------------------------------------------------------


def test_every_ruff_format_name_is_accepted_and_a_bad_one_lists_them():
    for name in ("full", "concise", "json", "json-lines", "junit", "grouped", "github"):
        assert formats.check(name) == name
    for name in ("gitlab", "pylint", "azure", "sarif"):
        assert formats.check(name) == name
    assert formats.check("text") == "full"  # ruff's former name
    with pytest.raises(UsageError) as e:
        formats.check("xml")
    message = str(e.value)
    assert "\n" not in message and "'xml'" in message
    assert all(name in message for name in formats.names())


def test_output_format_key_of_tool_traindoctor():
    settings = from_table({"output-format": "github"}, None, "t")
    assert settings.output_format == "github"
    assert settings.then(Layer(ignore=("TD1",))).output_format == "github"  # kept by later layers
    with pytest.raises(UsageError, match="output-format got 'xml'; pass one of: full"):
        from_table({"output-format": "xml"}, None, "pyproject.toml [tool.traindoctor]")


# -- github -------------------------------------------------------------------------------------


def test_github_annotates_the_users_line_with_severity_and_escapes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    rep = report(
        finding(title="100% of grads: a:b, c\r\nnext", source="my,dir/tr:ain.py:12"),
        finding("TD210", Severity.WARNING, source="train.py:30", name="loss-spike-or-divergence"),
        finding("TD101", source=None, name="loss-not-differentiable"),
    )
    lines = formats.render("github", rep).splitlines()
    assert lines[0].startswith(
        "::error title=traindoctor (TD102),file=my%2Cdir/tr%3Aain.py,line=12,col=1::100%25 of "
        "grads: a:b, c%0D%0Anext%0ACause: detached%0AFix: remove .detach()%0A"
    )
    assert lines[1].startswith("::warning title=traindoctor (TD210),file=train.py,line=30,col=1::")
    # No user-source location: an annotation without file and line.
    assert lines[2].startswith("::error title=traindoctor (TD101)::no grad")
    assert len(lines) == 3


def test_github_path_is_relative_to_github_workspace(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    out = formats.render("github", report(finding(source="train.py:7")))
    assert "file=sub/train.py,line=7," in out


def test_github_and_gitlab_say_nothing_of_a_healthy_run_info_findings():
    rep = report(finding("TD502", Severity.INFO, source=None, name="trainable-audit"))
    out = formats.render("github", rep)
    assert not any(
        line.startswith(("::error", "::warning", "::notice")) for line in out.split("\n")
    )
    assert out.startswith("::group::") and "TD502 trainable-audit" in out
    assert json.loads(formats.render("gitlab", rep)) == []
    assert formats.render("github", report()) == ""
    assert formats.render("pylint", rep) == "" and formats.render("azure", rep) == ""


# -- the other formats --------------------------------------------------------------------------


def test_concise_json_lines_pylint_azure():
    rep = report(finding(), finding("TD502", Severity.INFO, source=None, name="trainable-audit"))
    concise = formats.render("concise", rep).splitlines()
    assert concise[0] == "train.py:12:1: TD102 [error] no grad"
    assert concise[1] == "train.py: TD502 [info] no grad"
    assert concise[2].startswith("1 error, 1 info in 20 steps")
    rows = [json.loads(line) for line in formats.render("json-lines", rep).splitlines()]
    assert [r["code"] for r in rows] == ["TD102", "TD502"]
    assert rows[0]["where"]["source"] == "train.py:12"
    assert json.loads(formats.render("json", rep)) == rep.to_dict()
    assert formats.render("pylint", rep) == "train.py:12: [TD102] no grad\n"
    assert formats.render("azure", rep) == (
        "##vso[task.logissue type=error;sourcepath=train.py;linenumber=12;columnnumber=1;"
        "code=TD102;]no grad\n"
    )
    assert "train.py:12: TD102 params-without-grad" in formats.render("full", rep)
    grouped = formats.render("grouped", rep).splitlines()
    assert grouped[:3] == [
        "train.py",
        "  12:1     TD102 [error] no grad",
        "  -        TD502 [info] no grad",
    ]


def test_gitlab_fingerprints_are_stable_and_distinct():
    def render():
        return json.loads(
            formats.render("gitlab", report(finding(), finding(module="dec"), finding()))
        )

    first, second = render(), render()
    assert [i["fingerprint"] for i in first] == [i["fingerprint"] for i in second]
    assert len({i["fingerprint"] for i in first}) == 3  # same place twice: still two issues
    issue = first[0]
    assert issue["severity"] == "critical" and issue["location"] == {
        "path": "train.py",
        "lines": {"begin": 12},
    }
    assert issue["check_name"] == "traindoctor/TD102 params-without-grad"


def test_junit_one_suite_a_case_per_finding_and_per_rule_that_ran():
    rep = report(
        finding(),
        finding("TD210", Severity.WARNING, source=None, name="loss-spike-or-divergence"),
        finding("TD502", Severity.INFO, source=None, name="trainable-audit"),
        rules=["TD101", "TD102", "TD210", "TD502", "TD107"],
    )
    rep.outcome = {"skipped_rules": [{"code": "TD107"}]}
    root = ET.fromstring(formats.render("junit", rep))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("classname") for c in cases] == [
        "traindoctor.TD102",
        "traindoctor.TD210",
        "traindoctor.TD502",
        "traindoctor.TD101",
        "traindoctor.TD107",
    ]
    assert suite.get("tests") == "5" and suite.get("failures") == "2"
    assert suite.get("skipped") == "1" and root.get("failures") == "2"
    failure = cases[0].find("failure")
    assert failure.get("type") == "error" and failure.get("message") == "no grad"
    assert cases[0].get("file") == "train.py" and cases[0].get("line") == "12"
    assert cases[2].find("failure") is None  # info: a pass, with its text
    assert cases[3].find("failure") is None and cases[4].find("skipped") is not None


def test_sarif_rules_from_the_catalog_and_results_with_locations():
    from traindoctor.rules import all_rules

    rep = report(finding(), finding("TD502", Severity.INFO, source=None, name="trainable-audit"))
    doc = json.loads(formats.render("sarif", rep))
    assert doc["version"] == "2.1.0" and doc["$schema"].endswith("sarif-2.1.0.json")
    (run,) = doc["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.code for r in all_rules()]
    td102 = rules[[r["id"] for r in rules].index("TD102")]
    assert "Why it matters" in td102["fullDescription"]["text"]
    assert td102["defaultConfiguration"]["level"] == "error"
    error, info = run["results"]
    assert error["ruleId"] == "TD102" and error["level"] == "error"
    assert rules[error["ruleIndex"]]["id"] == "TD102"
    (loc,) = error["locations"]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == "train.py"
    assert loc["physicalLocation"]["region"]["startLine"] == 12
    assert info["kind"] == "informational" and info["level"] == "none"
    assert "locations" not in info


# -- end to end ---------------------------------------------------------------------------------

BUGGY = """
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
for step in range(40):
    i = torch.randint(0, 256, (32,))
    feats = model[1](model[0](x[i])).detach()  # BUG here
    loss = torch.nn.functional.cross_entropy(model[2](feats), y[i])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 10 == 0:
        print("script says step", step)
"""

HEALTHY = BUGGY.replace(".detach()  # BUG here", "")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folders = {n: tmp_path_factory.mktemp(n) for n in ("buggy", "healthy", "sarif", "config")}
    for name, folder in folders.items():
        write(folder, "train.py", HEALTHY if name == "healthy" else BUGGY)
    write(folders["config"], "pyproject.toml", '[tool.traindoctor]\noutput-format = "concise"\n')
    (folders["sarif"] / "out").mkdir()
    gh = ("check", "--fail-on", "error", "--output-format", "github", "train.py")
    first = run_all(
        {
            "buggy": lambda: td(folders["buggy"], *gh),
            "healthy": lambda: td(folders["healthy"], *gh),
            "sarif": lambda: td(
                folders["sarif"],
                "run",
                "--max-steps",
                "8",
                "-o",
                "out/td.sarif",
                "--output-format",
                "sarif",
                "train.py",
            ),  # fmt: skip
            "config": lambda: td(folders["config"], "run", "--max-steps", "8", "train.py"),
        }
    )
    run_dir = str(first["sarif"].run_dir())
    cwd = folders["sarif"]
    again = run_all(
        {
            f"report {fmt}": lambda fmt=fmt: td(cwd, "report", run_dir, "--output-format", fmt)
            for fmt in ("junit", "gitlab", "json-lines")
        }
        | {"report gitlab again": lambda: td(cwd, "report", run_dir, "--output-format", "gitlab")}
    )
    return {name: results[name] for results in (first, again) for name in results}


@pytest.mark.slow
def test_check_github_fail_on_error_annotates_the_line_and_exits_3(runs):
    r = runs["buggy"]
    assert r.rc == 3, r
    line = line_of(r.cwd / "train.py", "BUG here")
    errors = [x for x in r.stdout.splitlines() if x.startswith("::error ")]
    assert f"::error title=traindoctor (TD102),file=train.py,line={line},col=1::" in r.stdout, r
    assert errors, r
    # stdout is the annotations alone: the script's prints went to stderr.
    assert all(x.startswith(("::", "  ")) for x in r.stdout.splitlines()), r
    assert "script says step 0" in r.stderr


@pytest.mark.slow
def test_check_github_on_a_healthy_script_annotates_nothing_and_exits_0(runs):
    r = runs["healthy"]
    assert r.rc == 0, r
    assert not [x for x in r.stdout.splitlines() if x.startswith(("::error", "::warning"))], r
    assert "::notice" not in r.stdout


@pytest.mark.slow
def test_sarif_to_an_output_file_leaves_the_scripts_stdout_alone(runs):
    r = runs["sarif"]
    assert r.rc == 0, r
    assert "script says step 0" in r.stdout  # not redirected: the findings went to the file
    doc = json.loads((r.cwd / "out" / "td.sarif").read_text())
    results = {x["ruleId"]: x for x in doc["runs"][0]["results"]}
    loc = results["TD102"]["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "train.py"
    assert loc["region"]["startLine"] == line_of(r.cwd / "train.py", "BUG here")


@pytest.mark.slow
def test_output_format_from_pyproject(runs):
    r = runs["config"]
    line = line_of(r.cwd / "train.py", "BUG here")
    assert f"train.py:{line}:1: TD102 [error]" in r.stdout, r


@pytest.mark.slow
def test_report_renders_junit_gitlab_json_lines(runs):
    junit = ET.fromstring(runs["report junit"].stdout)
    cases = junit.find("testsuite").findall("testcase")
    assert any(
        c.get("classname") == "traindoctor.TD102" and c.find("failure") is not None for c in cases
    )
    assert len(cases) > 20  # every rule that ran is a case
    gitlab = json.loads(runs["report gitlab"].stdout)
    assert gitlab == json.loads(runs["report gitlab again"].stdout)
    assert "TD102" in {i["check_name"].split()[0].split("/")[1] for i in gitlab}
    codes = [json.loads(x)["code"] for x in runs["report json-lines"].stdout.splitlines()]
    assert "TD102" in codes


def test_bad_values_are_one_line_usage_errors(tmp_path):
    write(tmp_path, "train.py", "print('never runs')\n")
    cases = {
        "bad": ("run", "--output-format", "xml", "train.py"),
        "both": ("run", "--json", "--output-format", "github", "train.py"),
        "nodir": ("run", "-o", "missing/out.sarif", "--output-format", "sarif", "train.py"),
        "report": ("report", str(tmp_path), "--output-format", "xml"),
    }
    results = run_all({k: lambda a=a: td(tmp_path, *a) for k, a in cases.items()})
    for name, expected in (
        ("bad", "pass one of: full, concise"),
        ("both", "contradict each other"),
        ("nodir", "does not exist"),
        ("report", "pass one of: full, concise"),
    ):
        r = results[name]
        assert r.rc == 4, r
        assert len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr, r
        assert "never runs" not in r.stdout + r.stderr
