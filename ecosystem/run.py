"""Run traindoctor on the ecosystem corpus: real, unchanged training programs and their mutants.

Each program is materialized from a fetched snapshot (its files are never committed: see
README.md), given synthetic data in its own on-disk format by our make_data.py, run once plainly
and once under `traindoctor run`; each mutant is the same program with one real-world bug
applied as string replacements. Prints a table and the totals; writes results.json.

Exit status: 1 when a program fails plainly (the corpus is broken), when traindoctor changes the
outcome of a run (a program that exits 0 plainly fails under it), or, with --strict, when an
unchanged program gets an error/warning or a mutant is missed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROGRAMS = HERE / "programs"
UPSTREAM = HERE / ".upstream"
VENVS = {"main": ROOT / ".venv", "vision": ROOT / ".venv-ultralytics"}
MIRRORS = Path(os.environ.get("TRAINDOCTOR_MIRRORS", "/work/.mirror"))
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}
# Nothing reaches the network, runs are single-threaded (two cases run side by side on CI's
# two cores) and hash seeds fixed, so a case gives the same findings every time.
BASE_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "MPLBACKEND": "Agg",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "YOLO_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class Case:
    program: str
    spec: dict
    mutant: dict | None = None

    @property
    def name(self) -> str:
        return self.program + (f"::{self.mutant['name']}" if self.mutant else "")

    @property
    def expected(self) -> list[str]:
        return list((self.mutant or self.spec).get("expected", []))


NOT_RUN = "not run"  # the case came after --budget-s was spent


@dataclass
class Outcome:
    case: str
    kind: str  # "program" or "mutant"
    expected: list[str]
    verdict: str  # ok, FALSE-ALARM, MISS, BROKEN, CHANGED, unavailable, NOT_RUN
    findings: list[tuple[str, str]] = field(default_factory=list)
    plain_rc: int | None = None
    td_rc: int | None = None
    seconds_plain: float = 0.0
    seconds_td: float = 0.0
    steps: int | None = None
    note: str = ""


def load_programs(only: set[str] | None) -> dict[str, dict]:
    specs = {}
    for path in sorted(PROGRAMS.glob("*/program.json")):
        name = path.parent.name
        if only and name not in only and not any(o.startswith(name + "::") for o in only):
            continue
        specs[name] = json.loads(path.read_text())
    return specs


def load_mutants(program: str) -> list[dict]:
    path = PROGRAMS / program / "mutants.json"
    return json.loads(path.read_text()) if path.exists() else []


def mirror_gitdir(repo: str) -> Path:
    path = MIRRORS / repo.replace("/", "+") / "repo"
    # some snapshots are a work-tree-less clone (repo/.git) rather than a bare repository
    return path / ".git" if (path / ".git").is_dir() else path


def materialize(program: str, spec: dict) -> str | None:
    """Copy the program's files from its snapshot into .upstream/; None when all is in place."""
    dest = UPSTREAM / program
    paths = dict(spec["files"])
    if spec.get("license_file"):
        paths.setdefault(spec["license_file"], None)
    missing = [p for p, digest in paths.items() if not _matches(dest / p, digest)]
    if not missing:
        return None
    gitdir = mirror_gitdir(spec["repo"])
    if not gitdir.exists():
        return f"no snapshot of {spec['repo']} at {gitdir} (fetch github:{spec['repo']})"
    for rel in missing:
        shown = subprocess.run(
            ["git", f"--git-dir={gitdir}", "show", f"{spec['commit']}:{rel}"],
            capture_output=True,
        )
        if shown.returncode != 0:
            return f"{spec['repo']}@{spec['commit'][:10]} has no {rel}"
        digest = paths[rel]
        if digest and hashlib.sha256(shown.stdout).hexdigest() != digest:
            return f"{rel} differs from the recorded sha256"
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(shown.stdout)
    return None


def _matches(path: Path, digest: str | None) -> bool:
    if not path.exists():
        return False
    return digest is None or hashlib.sha256(path.read_bytes()).hexdigest() == digest


def apply_mutant(tree: Path, mutant: dict) -> None:
    for edit in mutant["replace"]:
        path = tree / edit["file"]
        text = path.read_text()
        count = text.count(edit["old"])
        if count != 1:
            raise ValueError(
                f"mutant {mutant['name']}: {edit['old']!r} occurs {count} times in {edit['file']}"
            )
        path.write_text(text.replace(edit["old"], edit["new"]))


def prepare(case: Case, work: Path) -> Path:
    """Materialized tree + mutant + data in a fresh folder; returns the program's cwd."""
    tree = work / "tree"
    shutil.copytree(UPSTREAM / case.program, tree)
    if case.mutant:
        apply_mutant(tree, case.mutant)
    cwd = tree / case.spec.get("cwd", ".")
    cwd.mkdir(parents=True, exist_ok=True)
    # A program may share another's generator when both read the same format.
    make_data = PROGRAMS / case.program / case.spec.get("make_data", "make_data.py")
    if make_data.exists():
        run = subprocess.run(
            [str(python_of(case.spec)), str(make_data), *case.spec.get("data", [])],
            cwd=cwd,
            env=env_of(case.spec, work),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if run.returncode != 0:
            raise RuntimeError(f"make_data.py failed:\n{run.stderr[-2000:]}")
    return cwd


def python_of(spec: dict) -> Path:
    return VENVS[spec.get("venv", "main")] / "bin" / "python"


# Another checkout's src/ to measure instead of the installed traindoctor (a "before" table).
TRAINDOCTOR_SRC: Path | None = None
# `traindoctor run` (the judged mode) or `check` (20 steps + the experiments, TD701-TD705).
COMMAND = "run"


def env_of(spec: dict, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINDOCTOR_")}
    env.update(BASE_ENV)
    if TRAINDOCTOR_SRC is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(TRAINDOCTOR_SRC), spec.get("env", {}).get("PYTHONPATH")) if p
        )
    env["HOME"] = str(work / "home")  # caches and config files stay in the case's folder
    env["MPLCONFIGDIR"] = str(work / "home" / "mpl")
    env.update(
        {k: v for k, v in spec.get("env", {}).items() if k != "PYTHONPATH" or not TRAINDOCTOR_SRC}
    )
    return env


def run_case(case: Case, keep: bool, verbose: bool, plain_mutants: bool = False) -> Outcome:
    kind = "mutant" if case.mutant else "program"
    outcome = Outcome(case.name, kind, case.expected, "ok")
    work = Path(tempfile.mkdtemp(prefix=f"td-eco-{case.program}-"))
    try:
        spec, timeout = case.spec, case.spec.get("timeout", 300)
        cwd = prepare(case, work)
        # The plain run gets a copy of the whole tree (programs read ../data), so it leaves
        # nothing behind for the run under traindoctor.
        argv = list(spec["argv"])
        if case.mutant is None or plain_mutants:
            fresh = work / "plain"
            shutil.copytree(work / "tree", fresh, symlinks=True)
            t0 = time.perf_counter()
            plain_cwd = fresh / cwd.relative_to(work / "tree")
            plain = _run([str(python_of(spec)), *argv], plain_cwd, spec, work, timeout)
            outcome.seconds_plain = time.perf_counter() - t0
            outcome.plain_rc = plain.returncode
            shutil.rmtree(fresh, ignore_errors=True)
        else:  # the mutant's harm was measured when it was written; only judged here
            plain = subprocess.CompletedProcess([], 0, "", "")
        td_args = ["-m", "traindoctor", COMMAND, "--out", str(work / "td"), "--json"]
        if spec.get("max_steps") and COMMAND == "run":
            td_args += ["--max-steps", str(spec["max_steps"])]
        t0 = time.perf_counter()
        doc = _run([str(python_of(spec)), *td_args, *argv], cwd, spec, work, timeout)
        outcome.seconds_td = time.perf_counter() - t0
        outcome.td_rc = doc.returncode
        report = _findings(doc.stdout)
        if verbose:
            print(f"--- {case.name}: plain rc={plain.returncode}, traindoctor rc={doc.returncode}")
            print(plain.stderr[-1500:] if plain.returncode else "")
            print(doc.stderr[-3000:])
        if plain.returncode != 0 and not case.mutant:
            outcome.verdict = "BROKEN"
            outcome.note = "plain run failed: " + _last_line(plain.stderr)
            return outcome
        if report is None:
            outcome.verdict = "CHANGED" if plain.returncode == 0 else "BROKEN"
            outcome.note = "no findings.json: " + _last_line(doc.stderr)
            return outcome
        if outcome.plain_rc == 0 and doc.returncode not in (0, 3):
            outcome.verdict = "CHANGED"
            outcome.note = f"exit {doc.returncode} under traindoctor: " + _last_line(doc.stderr)
        outcome.steps = report.get("steps")
        outcome.findings = [(f["code"], f["severity"]) for f in report["findings"]]
        if report.get("internal_errors"):
            outcome.note = f"{len(report['internal_errors'])} internal errors"
        if outcome.verdict == "ok":
            outcome.verdict = judge(case, outcome.findings)
        return outcome
    except Exception as exc:  # a case that cannot be set up is reported, the others still run
        outcome.verdict = "BROKEN"
        outcome.note = f"{type(exc).__name__}: {exc}"[:300]
        return outcome
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        elif verbose:
            print(f"kept {work}")


def _run(cmd, cwd, spec, work, timeout) -> subprocess.CompletedProcess:
    """Runs one command; past its timeout it gets SIGTERM (traindoctor writes its report on it)."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env_of(spec, work),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return subprocess.CompletedProcess(
            cmd, 124, out, (err or "") + f"\ntimeout after {timeout}s"
        )


def _findings(stdout: str) -> dict | None:
    start = stdout.find('{\n  "schema"')
    if start < 0:
        return None
    try:
        return json.JSONDecoder().raw_decode(stdout[start:])[0]
    except ValueError:
        return None


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def judge(case: Case, findings: list[tuple[str, str]]) -> str:
    loud = [(c, s) for c, s in findings if SEVERITY_RANK[s] >= 1]
    if not case.mutant:
        flagged = [c for c, _ in loud if c not in case.expected]
        return "FALSE-ALARM" if flagged else "ok"
    floor = SEVERITY_RANK[case.mutant.get("min_severity", "warning")]
    top = [c for c, s in findings if SEVERITY_RANK[s] >= floor][:3]
    return "ok" if set(top) & set(case.expected) else "MISS"


def cases(specs: dict[str, dict], only: set[str] | None, programs_only: bool) -> list[Case]:
    out = []
    for name, spec in specs.items():
        out.append(Case(name, spec))
        if programs_only:
            continue
        out += [Case(name, spec, m) for m in load_mutants(name)]
    if only:
        out = [c for c in out if c.name in only or c.program in only]
    return out


def print_table(outcomes: list[Outcome]) -> None:
    width = max([len(o.case) for o in outcomes] + [10])
    print(f"{'case':<{width}}  {'expected':<18} {'verdict':<11} {'plain':>6} {'td':>6}  findings")
    for o in outcomes:
        found = " ".join(f"{c}:{s[0].upper()}" for c, s in o.findings) or "-"
        expected = ",".join(o.expected) or "clean"
        times = f"{o.seconds_plain:6.1f} {o.seconds_td:6.1f}"
        print(f"{o.case:<{width}}  {expected:<18} {o.verdict:<11} {times}  {found}")
        if o.note:
            print(f"{'':<{width}}  note: {o.note}")


def totals(outcomes: list[Outcome]) -> dict[str, object]:
    counted = [o for o in outcomes if o.verdict not in ("unavailable", NOT_RUN)]
    progs = [o for o in counted if o.kind == "program"]
    muts = [o for o in counted if o.kind == "mutant"]
    return {
        "programs": len(progs),
        "programs_clean": sum(o.verdict == "ok" for o in progs),
        "mutants": len(muts),
        "mutants_caught": sum(o.verdict == "ok" for o in muts),
        "broken": sum(o.verdict == "BROKEN" for o in progs + muts),
        "changed": sum(o.verdict == "CHANGED" for o in progs + muts),
        "unavailable": sum(o.verdict == "unavailable" for o in outcomes),
        "not_run": sum(o.verdict == NOT_RUN for o in outcomes),
    }


def install(specs: dict[str, dict]) -> int:
    """pip installs each venv's extra packages, with its torch pinned to the build it has."""
    wanted: dict[str, set[str]] = {}
    for spec in specs.values():
        wanted.setdefault(spec.get("venv", "main"), set()).update(spec.get("pip", []))
    for venv, packages in sorted(wanted.items()):
        if not packages:
            continue
        python = VENVS[venv] / "bin" / "python"
        torch_version = subprocess.run(
            # The distribution's version, not torch.__version__: a CUDA wheel's "2.15.0+cu132"
            # names no wheel pip can find, and the pin then made every install unresolvable.
            [str(python), "-c", "import importlib.metadata as m; print(m.version('torch'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pins:
            pins.write(f"torch=={torch_version}\n")
        cmd = [str(python), "-m", "pip", "install", "-q", "-c", pins.name, *sorted(packages)]
        print(" ".join(cmd[2:]), flush=True)
        # The venv's own torch is the pin: a machine-wide pip constraint (a torch cap in
        # /etc/xdg/pip) would make it unresolvable.
        env = {**os.environ, "PIP_CONSTRAINT": ""}
        marker = UPSTREAM / f".install-failed-{venv}"
        if subprocess.run(cmd, env=env).returncode != 0:
            # Not the corpus's fault: its programs are listed as unavailable, with the reason.
            UPSTREAM.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"pip could not install {' '.join(sorted(packages))} into {venv}")
            print(f"warning: {marker.read_text()}", file=sys.stderr)
        elif marker.exists():
            marker.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="program or program::mutant names")
    parser.add_argument("--programs-only", action="store_true", help="skip the mutants")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("-v", "--verbose", action="store_true", help="print each run's stderr")
    parser.add_argument("--keep", action="store_true", help="keep each case's work folder")
    parser.add_argument("--strict", action="store_true", help="fail on any false alarm or miss")
    parser.add_argument(
        "--plain-mutants", action="store_true", help="also run each mutant plainly (its harm)"
    )
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument("--install", action="store_true", help="pip install the programs' extras")
    parser.add_argument(
        "--budget-s",
        type=float,
        help="start no case after this many seconds (programs run before mutants)",
    )
    parser.add_argument(
        "--check", action="store_true", help="use `traindoctor check` (20 steps + experiments)"
    )
    parser.add_argument(
        "--traindoctor-src", type=Path, help="measure the traindoctor of another checkout's src/"
    )
    args = parser.parse_args(argv)
    global TRAINDOCTOR_SRC, COMMAND
    COMMAND = "check" if args.check else "run"
    TRAINDOCTOR_SRC = args.traindoctor_src.resolve() if args.traindoctor_src else None
    only = set(args.only) if args.only else None
    if args.install:
        specs = load_programs(only)
        return install({n: s for n, s in specs.items() if materialize(n, s) is None})

    specs = load_programs(only)
    if not specs:
        print("no programs match", file=sys.stderr)
        return 1
    unavailable = {}
    for name, spec in specs.items():
        failed = UPSTREAM / f".install-failed-{spec.get('venv', 'main')}"
        reason = failed.read_text() if failed.exists() else materialize(name, spec)
        if reason:
            unavailable[name] = reason
    todo = [c for c in cases(specs, only, args.programs_only) if c.program not in unavailable]
    skipped = [
        Outcome(c.name, "mutant" if c.mutant else "program", c.expected, "unavailable")
        for c in cases(specs, only, args.programs_only)
        if c.program in unavailable
    ]
    for name, reason in unavailable.items():
        print(f"unavailable: {name}: {reason}", file=sys.stderr)
    started = time.monotonic()

    def run_within_budget(case: Case) -> Outcome:
        # CI's hard limit bounds the whole job: past the budget a case is listed, not run.
        if args.budget_s is not None and time.monotonic() - started > args.budget_s:
            kind = "mutant" if case.mutant else "program"
            note = f"the time budget (--budget-s {args.budget_s:g}) was spent"
            return Outcome(case.name, kind, case.expected, NOT_RUN, note=note)
        return run_case(case, args.keep, args.verbose, args.plain_mutants)

    # Unchanged programs first: under a budget, the false-alarm and bit-identity checks of
    # every program come before any mutant.
    order = sorted(range(len(todo)), key=lambda i: todo[i].mutant is not None)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        ran = dict(zip(order, pool.map(run_within_budget, [todo[i] for i in order]), strict=True))
    outcomes = [ran[i] for i in range(len(todo))]
    outcomes += skipped
    print_table(outcomes)
    summary = totals(outcomes)
    print(
        f"\nunchanged programs clean: {summary['programs_clean']}/{summary['programs']}   "
        f"mutants caught: {summary['mutants_caught']}/{summary['mutants']}   "
        f"broken: {summary['broken']}   changed by traindoctor: {summary['changed']}   "
        f"unavailable: {summary['unavailable']}"
        + (f"   not run (time budget): {summary['not_run']}" if summary["not_run"] else "")
    )
    args.results.write_text(
        json.dumps(
            {"totals": summary, "cases": [o.__dict__ for o in outcomes]}, indent=1, default=str
        )
    )
    failed = summary["broken"] or summary["changed"]
    if args.strict:
        failed = failed or any(o.verdict in ("FALSE-ALARM", "MISS") for o in outcomes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
