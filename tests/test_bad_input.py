"""Bad input to every public entry point is a one-line error that names the bad value and says
what to pass: `traindoctor.UsageError` in Python, one line on stderr and exit code 4 (no
traceback) on the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import traindoctor as td

USAGE = 4


def _model_and_opt():
    model = torch.nn.Linear(2, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def assert_usage(excinfo, *needles: str) -> None:
    msg = str(excinfo.value)
    assert excinfo.type is td.UsageError, (excinfo.type, msg)
    assert "\n" not in msg, msg
    assert "pass" in msg.lower(), msg
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.fixture
def afile(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a directory")
    return path


# -- td.watch ---------------------------------------------------------------------------------
MOD, OPT = "model", "optimizer"  # placeholders replaced by the real objects
WATCH_CASES = [
    # (args, kwargs, needles)
    ((None, OPT), {}, ("model=None",)),
    (({}, OPT), {}, ("empty dict",)),
    (([1], OPT), {}, ("1 (int)", "nn.Module")),
    ((["net"], OPT), {}, ("'net' (str)",)),
    (("net", OPT), {}, ("'net' (str)", "nn.Module")),
    (({0: MOD}, OPT), {}, ("0 (int)", "string keys")),
    ((OPT, MOD), {}, ("optimizer (SGD) as model", "td.watch(model, optimizer)")),
    ((MOD, "adam"), {}, ("'adam' (str)", "AdamW(model.parameters())")),
    ((MOD, MOD), {}, ("Linear", "optimizer")),
    ((MOD, [OPT, 3]), {}, ("3 (int)", "optimizers")),
    ((MOD, []), {}, ("empty list",)),
    ((MOD, OPT, 0.05), {}, ("GradScaler", "budget=0.05")),
    ((MOD, OPT, OPT), {}, ("GradScaler", "SGD")),
    ((MOD, OPT), {"budget": "0.1"}, ("'0.1' (str)", "(0, 1]")),
    ((MOD, OPT), {"budget": 0}, ("0 (int)", "(0, 1]")),
    ((MOD, OPT), {"budget": 2}, ("2 (int)",)),
    ((MOD, OPT), {"budget": float("nan")}, ("nan (float)",)),
    ((MOD, OPT), {"budget": True}, ("True",)),
    ((MOD, OPT), {"out_dir": None}, ("out_dir", "None", "directory")),
    ((MOD, OPT), {"out_dir": 3}, ("3 (int)", "directory")),
    ((MOD, OPT), {"select": "TD102"}, ("'TD102'", "select=['TD102']")),
    ((MOD, OPT), {"select": ["TD999"]}, ("'TD999'", "matches no rule")),
    ((MOD, OPT), {"select": ["foo"]}, ("'foo'", "not a rule code")),
    ((MOD, OPT), {"select": 5}, ("5 (int)", "list of rule codes")),
    ((MOD, OPT), {"ignore": [1]}, ("1 (int)", "ignore=")),
    ((MOD, OPT), {"console": "no"}, ("'no' (str)", "True")),
    ((MOD, OPT), {"max_steps": 5}, ("'max_steps'", "5 (int)", "--max-steps")),
    ((MOD, OPT), {"optimiser": OPT}, ("'optimiser'", "did you mean optimizer=")),
    ((MOD, OPT), {"out": "runs"}, ("'out'", "out_dir=")),
]


@pytest.mark.parametrize(("args", "kwargs", "needles"), WATCH_CASES)
def test_watch(tmp_path, monkeypatch, args, kwargs, needles):
    monkeypatch.chdir(tmp_path)
    model, opt = _model_and_opt()

    def real(x):
        if isinstance(x, list):
            return [real(v) for v in x]
        if isinstance(x, dict):
            return {k: real(v) for k, v in x.items()}
        return {MOD: model, OPT: opt}.get(x, x) if isinstance(x, str) else x

    args = tuple(real(a) for a in args)
    kwargs = {k: real(v) for k, v in kwargs.items()}
    kwargs.setdefault("console", False)
    with pytest.raises(td.UsageError) as excinfo:
        td.watch(*args, **kwargs)
    assert_usage(excinfo, *needles)
    assert not (tmp_path / "traindoctor-runs").exists()


def test_watch_out_dir_that_is_a_file(afile):
    model, opt = _model_and_opt()
    with pytest.raises(td.UsageError) as excinfo:
        td.watch(model, opt, out_dir=afile, console=False)
    assert_usage(excinfo, str(afile), "is a file")
    with pytest.raises(td.UsageError) as excinfo:
        td.watch(model, opt, out_dir=afile / "runs", console=False)
    assert_usage(excinfo, str(afile / "runs"), "is a file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_watch_out_dir_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    model, opt = _model_and_opt()
    try:
        with pytest.raises(td.UsageError) as excinfo:
            td.watch(model, opt, out_dir=locked / "runs", console=False)
    finally:
        locked.chmod(0o700)
    assert_usage(excinfo, "not writable")


def test_watch_takes_rule_names_and_prefixes_and_none(tmp_path):
    model, opt = _model_and_opt()
    doc = td.watch(
        model, opt, out_dir=tmp_path, console=False, select=["params-without-grad", "td5"]
    )
    try:
        codes = {r.code for r in doc.rules}
        assert "TD102" in codes and "TD101" not in codes
        assert codes - {"TD102"} and all(c.startswith("TD5") for c in codes - {"TD102"})
    finally:
        doc.close()
    doc = td.watch(model, opt, out_dir=tmp_path, console=False, select=None, ignore=None)
    doc.close()


# -- the Doctor's methods ---------------------------------------------------------------------
@pytest.fixture
def doc(tmp_path):
    model, opt = _model_and_opt()
    d = td.watch(model, opt, out_dir=tmp_path, console=False)
    yield d
    d.close()


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"loss": "x"}, ("loss", "str")),
        ({"loss": [1.0]}, ("loss", "list")),
        ({"parts": [1]}, ("parts", "list")),
        ({"parts": {"box": "x"}}, ("box", "str")),
        ({"acc": object()}, ("acc", "object")),
    ],
)
def test_log(doc, kwargs, needles):
    with pytest.raises(td.UsageError) as excinfo:
        doc.log(**kwargs)
    assert_usage(excinfo, *needles)


@pytest.mark.parametrize("bad", [3, "model", torch.optim.SGD])
def test_validating_takes_a_module(doc, bad):
    with pytest.raises(td.UsageError) as excinfo, doc.validating(bad):
        pass
    assert_usage(excinfo, type(bad).__name__, "doc.validating(model)")


def test_close_twice_returns_the_same_report(doc):
    assert doc.close() is doc.close()


# -- td.explain_gradients ---------------------------------------------------------------------
def _loss():
    return torch.nn.Linear(2, 1)(torch.ones(1, 2)).sum()


@pytest.mark.parametrize(
    ("make", "kwargs", "needles"),
    [
        (lambda: 3, {}, ("3 (int)", "loss")),
        (lambda: torch.nn.Linear(2, 1)(torch.ones(3, 2)), {}, ("(3, 1)", "loss.mean()")),
        (lambda: _loss().detach(), {}, ("no grad_fn",)),
        (_loss, {"params": 3}, ("3 (int)", "model.parameters()")),
        (_loss, {"params": torch.nn.Linear(2, 1)}, ("Linear", "params=model.parameters()")),
        (_loss, {"params": []}, ("no tensors",)),
        (_loss, {"params": [torch.nn.Linear(2, 1)]}, ("Linear",)),
        (_loss, {"params": [torch.ones(2)]}, ("(2,)", "does not require grad")),
        (_loss, {"limit": "x"}, ("'x' (str)", "limit")),
        (_loss, {"limit": 0}, ("0 (int)", ">= 1")),
    ],
)
def test_explain_gradients(make, kwargs, needles):
    with pytest.raises(td.UsageError) as excinfo:
        td.explain_gradients(make(), **kwargs)
    assert_usage(excinfo, *needles)


def test_checked_functions_keep_their_identity():
    assert td.explain_gradients.__module__ == "traindoctor.gradpath"
    assert td.explain_gradients.__doc__.startswith("Run `loss.backward()`")
    assert td.explain_gradients(_loss(), limit=10).nodes


# -- td.evaluate ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make_args", "kwargs", "needles"),
    [
        (lambda m, metric: (3, [], metric), {}, ("3 (int)", "nn.Module")),
        (lambda m, metric: (m, 3, metric), {}, ("3 (int)", "DataLoader")),
        (lambda m, metric: (m, {"a": metric}, []), {}, ("as the loader", "then the metrics")),
        (lambda m, metric: (m, [], {}), {}, ("empty dict",)),
        (lambda m, metric: (m, [], {"auc": 3}), {}, ("'auc'", "3 (int)", "Metric")),
        (lambda m, metric: (m, [], "auroc"), {}, ("str", "MetricCollection")),
        (lambda m, metric: (m, [], metric, 3), {}, ("step_fn", "3 (int)")),
        (lambda m, metric: (m, [], metric), {"doctor": 3}, ("doctor", "3 (int)")),
        (lambda m, metric: (m, [], metric), {"prefix": 3}, ("prefix", "3 (int)")),
    ],
)
def test_evaluate(make_args, kwargs, needles):
    classification = pytest.importorskip("torchmetrics.classification")
    args = make_args(torch.nn.Linear(2, 1), classification.BinaryAUROC())
    with pytest.raises(td.UsageError) as excinfo:
        td.evaluate(*args, **kwargs)
    assert_usage(excinfo, *needles)


# -- framework integrations -------------------------------------------------------------------
OPTION_CASES = [
    ({"budget": "x"}, ("budget", "'x' (str)")),
    ({"console": "yes"}, ("console", "'yes' (str)")),
    ({"select": "TD1"}, ("select=['TD1']",)),
    ({"ignore": ["XX"]}, ("'XX'", "not a rule code")),
    ({"outdir": "runs"}, ("'outdir'", "did you mean out_dir=")),
]


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        *OPTION_CASES,
        ({"max_steps": 0}, ("max_steps", "0 (int)")),
        ({"max_steps": "3"}, ("max_steps", "'3' (str)")),
        ({"mode": "fast"}, ("mode", "'fast' (str)", "'lightning'")),
    ],
)
def test_lightning_callback(kwargs, needles):
    pytest.importorskip("lightning")
    import traindoctor.lightning as tdl

    with pytest.raises(td.UsageError) as excinfo:
        tdl.Doctor(**kwargs)
    assert_usage(excinfo, "traindoctor.lightning.Doctor", *needles)


def test_lightning_positional_and_attach(afile):
    pytest.importorskip("lightning")
    import traindoctor.lightning as tdl

    with pytest.raises(td.UsageError) as excinfo:
        tdl.Doctor("runs")
    assert_usage(excinfo, "'runs' (str)", "keyword arguments only")
    with pytest.raises(td.UsageError) as excinfo:
        tdl.Doctor(out_dir=afile)
    assert_usage(excinfo, str(afile), "is a file")
    with pytest.raises(td.UsageError) as excinfo:
        tdl.attach(3, torch.nn.Linear(1, 1))
    assert_usage(excinfo, "3 (int)", "Trainer")
    with pytest.raises(td.UsageError) as excinfo:
        tdl.attach(types.SimpleNamespace(optimizers=[]), "module")
    assert_usage(excinfo, "'module' (str)", "LightningModule")


@pytest.mark.parametrize(
    ("kwargs", "needles"), [*OPTION_CASES, ({"doctor": 3}, ("doctor", "3 (int)"))]
)
def test_transformers_callback(kwargs, needles):
    pytest.importorskip("transformers")
    import traindoctor.transformers as tdt

    with pytest.raises(td.UsageError) as excinfo:
        tdt.Doctor(**kwargs)
    assert_usage(excinfo, "traindoctor.transformers.Doctor", *needles)


def test_transformers_positional_and_attach_trainer():
    pytest.importorskip("transformers")
    import traindoctor.transformers as tdt

    with pytest.raises(td.UsageError) as excinfo:
        tdt.Doctor("runs")
    assert_usage(excinfo, "'runs' (str)", "keyword arguments only")
    with pytest.raises(td.UsageError) as excinfo:
        tdt.attach_trainer(3)
    assert_usage(excinfo, "3 (int)", "transformers.Trainer")


def test_accelerate_watch():
    import traindoctor.accelerate as tda

    model, opt = _model_and_opt()
    accelerator = types.SimpleNamespace(prepare=lambda *objs: objs, scaler=None)
    cases = [
        (lambda: tda.watch(model, opt), ("Linear", "Accelerator first")),
        (lambda: tda.watch(accelerator, model), ("no optimizer",)),
        (lambda: tda.watch(accelerator, model, opt, budget=-1), ("-1 (int)", "budget")),
        (lambda: tda.watch(accelerator, model, opt, scalr=None), ("'scalr'",)),
        (lambda: tda.watch(accelerator, "m", opt), ("'m' (str)", "nn.Module")),
    ]
    for call, needles in cases:
        with pytest.raises(td.UsageError) as excinfo:
            call()
        assert_usage(excinfo, *needles)


def test_ultralytics_options():
    import traindoctor.ultralytics as tdu

    with pytest.raises(td.UsageError) as excinfo:
        tdu.Doctor(budget="x")
    assert_usage(excinfo, "budget", "'x' (str)")


# -- the command line -------------------------------------------------------------------------
CLI_CASES = {
    # name: (argv, needles)
    "directory": (["run", "adir"], ("'adir'", "is a directory", "train.py")),
    "txt": (["run", "notes.txt"], ("'notes.txt'", ".txt", ".py")),
    "notebook": (["run", "nb.ipynb"], ("'nb.ipynb'", "nbconvert")),
    "missing": (["run", "missing.py"], ("'missing.py'", "does not exist")),
    "no_script": (["run"], ("pass a script",)),
    "max_steps_0": (["run", "--max-steps", "0", "t.py"], ("--max-steps", "0", ">= 1")),
    "max_steps_x": (["check", "--max-steps", "x", "t.py"], ("--max-steps", "'x'")),
    "fail_on": (["run", "--fail-on", "bad", "t.py"], ("'bad'", "--fail-on error")),
    "budget": (["run", "--budget", "0.1", "t.py"], ("'--budget'", "--max-steps")),
    "select": (["run", "--select", "TD999", "t.py"], ("--select", "'TD999'", "matches no rule")),
    "out_file": (["run", "--out", "afile", "t.py"], ("'afile'", "is a file")),
    "module_path": (["run", "-m", "t.py"], ("'t.py'", "-m t")),
    "module_missing": (["run", "-m", "no_such_module_xyz"], ("'no_such_module_xyz'",)),
    "m_no_value": (["run", "-m"], ("'-m'", "module name")),
    "explain_unknown": (["explain", "TD999"], ("'TD999'", "TD102")),
    "explain_malformed": (["explain", "not a code!"], ("'not a code!'", "TD102")),
    "explain_missing": (["explain"], ("CODE", "TD102")),
    "report_missing": (["report", "nope"], ("'nope'", "does not exist")),
    "report_file": (["report", "afile"], ("'afile'", "is a file")),
    "report_empty": (["report", "adir"], ("adir", "findings.json")),
    "report_corrupt": (["report", "corrupt"], ("findings.json", "run directory")),
    "unknown_command": (["frobnicate"], ("'frobnicate'", "report, rules, run")),
    "rules_extra": (["rules", "extra"], ("extra",)),
    "rules_option": (["rules", "--bogus"], ("'--bogus'", "--json")),
    "demo_out": (["demo", "--out", "afile", "--only", "x"], ("'afile'", "is a file")),
    "demo_only": (["demo", "--only", "nosuch"], ("'nosuch'",)),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bad_cli")
    (cwd / "t.py").write_text("print('the script ran')\n")
    (cwd / "notes.txt").write_text("lr: 0.1\n")
    (cwd / "nb.ipynb").write_text("{}\n")
    (cwd / "afile").write_text("x\n")
    (cwd / "adir").mkdir()
    (cwd / "corrupt").mkdir()
    (cwd / "corrupt" / "findings.json").write_text("{not json")
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)

    def run(argv):
        return subprocess.run(
            [sys.executable, "-m", "traindoctor", *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    with ThreadPoolExecutor(4) as pool:
        done = dict(zip(CLI_CASES, pool.map(run, [a for a, _ in CLI_CASES.values()]), strict=True))
    return cwd, done


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli(cli_results, name):
    cwd, results = cli_results
    r = results[name]
    argv, needles = CLI_CASES[name]
    detail = f"{argv}: rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    assert r.returncode == USAGE, detail
    assert "Traceback" not in r.stderr, detail
    assert "the script ran" not in r.stdout + r.stderr, detail
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, detail
    assert lines[0].startswith("traindoctor: error: "), detail
    assert "pass" in lines[0].lower(), detail
    for needle in needles:
        assert needle in lines[0], (needle, detail)
    assert not (cwd / "traindoctor-runs").exists(), detail
