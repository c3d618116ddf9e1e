"""Architecture metrics of src/traindoctor (issue 14: "Measure it"): the Doctor's size, private
cross-module accesses, import cycles and `duplicates` pairs. Standard library only; reads the
source as text (ast), imports nothing from traindoctor.

    python bench/architecture.py [--src DIR] [--json]

DIR is the folder holding the `traindoctor` package (default: this checkout's src/).

The Doctor: lines of doctor.py; lines of its `Doctor` class (decorators to last line); its methods
(functions defined directly in the class body, properties included); its attributes (distinct
names assigned as `self.x = ...`, `self.x += ...` or `self.x: T = ...` anywhere in the class).

Private cross-module access. A module *defines* a private name `_x` (one leading underscore, not a
dunder) when `_x` is a module-level def, class or assignment target (also inside module-level
if/try/with), a method or assignment target in a class body (nested classes too), or an attribute
assigned as `self._x = ...` / `cls._x = ...`. A module *accesses* `_x` by
- an attribute `obj._x` (read, write or delete) whose receiver is not `self` or `cls` and not a
  module outside traindoctor (`torch._foreach_norm`, `sys._getframe`, `F._x`), or
- `from m import _x` where m resolves to a traindoctor module.
The access is *cross-module* when the accessing module does not define `_x` itself and some other
traindoctor module does (for `mod._x` on an imported traindoctor module, and for `from m import
_x`, the defining module is that module exactly). Names traindoctor never defines (torch's,
Python's) are not counted. Each access is listed as (accessing module, name, defining modules).
It *crosses a package boundary* when no defining module is in the accessing module's package,
the packages being: traindoctor/ (top-level modules), probes/, rules/ (with its family folders),
integrations/, report/, scenarios/. Doctor accesses: cross-module accesses, from a module other
than doctor.py, of a private name that doctor.py's `Doctor` class defines.

Import cycles: the import graph has an edge a -> b for every `import traindoctor.b`,
`from traindoctor.b import x` or relative import in module a that resolves to module b (`from p
import m` goes to the submodule p.m when there is one, else to p; the implicit import of parent
packages is not an edge). "All imports" counts every import statement; "module-level" counts only
those run when the module is imported (module body, class bodies, module-level if/try), not those
inside functions nor under `if TYPE_CHECKING:`. A cycle is a strongly connected component of more
than one module (or a module importing itself).

Duplicates: `duplicates --most 200 --seconds 120` run with cwd DIR (if the command is on PATH), its
summary line "N pairs of places"; the same command on copies of the tree holding only scenarios/
and everything but scenarios/ gives the pairs inside scenarios/ and outside it.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "traindoctor"
BOUNDARIES = ("probes", "rules", "integrations", "report", "scenarios")
UNPARSED: list[str] = []  # files load() could not parse
# torch's own private attributes, read on torch objects (model._modules) and set by subclasses of
# torch classes (self._parameters[...] in a Module subclass): never traindoctor's.
TORCH_PRIVATES = frozenset(
    (
        "_modules", "_parameters", "_buffers", "_non_persistent_buffers_set", "_forward_hooks",
        "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
        "_load_state_dict_pre_hooks", "_version", "_base", "_cdata", "_grad_fn", "_grad",
        "_step_count", "_orig_mod",
    )
)  # fmt: skip
# A receiver whose last name is one of these is a Doctor (`doc._closed`, `ctx.doctor._validating`).
DOCTOR_NAMES = ("doc", "doctor", "_doctor")


@dataclass
class Module:
    name: str  # dotted: traindoctor.probes.base
    path: Path
    tree: ast.Module
    is_package: bool
    defines: set[str] = field(default_factory=set)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name != "_"


def package_of(module: str) -> str:
    """The boundary a module sits in: 'traindoctor' for top-level modules, else its subpackage."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in BOUNDARIES:
        return parts[1]
    if len(parts) == 2 and parts[1] in BOUNDARIES:  # a subpackage's __init__
        return parts[1]
    return PACKAGE


def load(src: Path) -> dict[str, Module]:
    root = src / PACKAGE
    modules = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except SyntaxError:  # a file half-written by someone else: said, not fatal
            UNPARSED.append(str(path.relative_to(src)))
            continue
        modules[name] = Module(name, path, tree, is_package)
    for m in modules.values():
        m.defines = _private_definitions(m.tree)
    return modules


# -- definitions ---------------------------------------------------------------------------------
def _target_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for t in target.elts for n in _target_names(t)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []


def _assigned(stmt: ast.stmt) -> list[ast.expr]:
    if isinstance(stmt, ast.Assign):
        return list(stmt.targets)
    if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        return [stmt.target]
    return []


def _body_names(body: list[ast.stmt], out: set[str]) -> None:
    """Names a module or class body binds (defs, classes, assignments), through if/try/with."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(stmt.name)
        for t in _assigned(stmt):
            out.update(_target_names(t))
        for sub in ("body", "orelse", "finalbody"):
            if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                _body_names(getattr(stmt, sub, []) or [], out)
        for handler in getattr(stmt, "handlers", []) or []:
            _body_names(handler.body, out)


def _self_attributes(cls: ast.ClassDef, private_only: bool = True) -> set[str]:
    out = set()
    for node in ast.walk(cls):
        targets = []
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = _assigned(node)
        for t in targets:
            for a in ast.walk(t):
                if (
                    isinstance(a, ast.Attribute)
                    and isinstance(a.value, ast.Name)
                    and a.value.id in ("self", "cls")
                    and (_is_private(a.attr) or not private_only)
                ):
                    out.add(a.attr)
    return out


def _private_definitions(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    _body_names(tree.body, names)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            _body_names(node.body, names)
            names |= _self_attributes(node)
    return {n for n in names if _is_private(n)}


# -- imports -------------------------------------------------------------------------------------
def _resolve(module: Module, level: int, target: str | None) -> str | None:
    """The dotted module a (possibly relative) `from` names."""
    if level == 0:
        return target
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    if level > 1:
        base = base[: -(level - 1)]
    return ".".join(base + ([target] if target else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> list[tuple[ast.stmt, bool]]:
    """Every import statement, with whether it runs when the module is imported."""
    out: list[tuple[ast.stmt, bool]] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, module_level))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), module_level)
            else:
                visit(child, module_level)

    visit(tree, True)
    return out


def import_graph(modules: dict[str, Module], module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m in modules.values():
        for stmt, at_import in _imports(m.tree):
            if module_level_only and not at_import:
                continue
            targets: list[str] = []
            if isinstance(stmt, ast.Import):
                targets = [a.name for a in stmt.names]
            else:
                base = _resolve(m, stmt.level, stmt.module)
                if base is None:
                    continue
                for a in stmt.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in modules else base)
            for t in targets:
                # `import traindoctor.a.b` binds the package but runs a.b: the deepest known module
                while t and t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t.split(".")[0] == PACKAGE:
                    graph[m.name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or with a self-import (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(found)


def hidden_edges(every: dict[str, set[str]], at_import: dict[str, set[str]]) -> list[list[str]]:
    """Imports inside functions or under TYPE_CHECKING that close a cycle of the full graph."""
    comp_of = {v: i for i, comp in enumerate(cycles(every)) for v in comp}
    return sorted(
        [a, b]
        for a, targets in every.items()
        for b in targets
        if a in comp_of and comp_of.get(b) == comp_of[a] and b not in at_import[a]
    )


# -- private accesses ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Access:
    module: str  # the accessing module
    name: str
    defined_in: tuple[str, ...]
    line: int

    @property
    def crosses_package(self) -> bool:
        home = package_of(self.module)
        return all(package_of(d) != home for d in self.defined_in)


def _aliases(m: Module, modules: dict[str, Module]) -> tuple[dict[str, str], set[str]]:
    """Names bound to traindoctor modules ({alias: module}) and to modules outside it."""
    ours: dict[str, str] = {}
    foreign: set[str] = set()
    for stmt, _ in _imports(m.tree):
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                bound = a.asname or a.name.split(".")[0]
                if a.name.split(".")[0] == PACKAGE:
                    target = a.name if a.asname else PACKAGE
                    if target in modules:
                        ours[bound] = target
                else:
                    foreign.add(bound)
        else:
            base = _resolve(m, stmt.level, stmt.module) or ""
            for a in stmt.names:
                sub = f"{base}.{a.name}"
                if sub in modules:
                    ours[a.asname or a.name] = sub
                elif base.split(".")[0] != PACKAGE:
                    foreign.add(a.asname or a.name)  # torch.nn.functional as F, or a function
    return ours, foreign


def _root_name(expr: ast.expr) -> str | None:
    while isinstance(expr, ast.Attribute):
        expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def _last_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return expr.id if isinstance(expr, ast.Name) else None


def private_accesses(modules: dict[str, Module]) -> list[Access]:
    doctor = doctor_privates(modules)
    definers: dict[str, set[str]] = defaultdict(set)
    for m in modules.values():
        for n in m.defines:
            definers[n].add(m.name)
    out: list[Access] = []
    for m in modules.values():
        ours, foreign = _aliases(m, modules)
        for node in ast.walk(m.tree):
            if isinstance(node, ast.ImportFrom):
                base = _resolve(m, node.level, node.module)
                if base not in modules or base == m.name:
                    continue
                for a in node.names:
                    if _is_private(a.name) and f"{base}.{a.name}" not in modules:
                        out.append(Access(m.name, a.name, (base,), node.lineno))
            elif isinstance(node, ast.Attribute) and _is_private(node.attr):
                v = node.value
                if isinstance(v, ast.Name) and v.id in ("self", "cls"):
                    continue
                if _last_name(v) in DOCTOR_NAMES and node.attr in doctor:
                    if m.name != DOCTOR_MODULE:
                        out.append(Access(m.name, node.attr, (DOCTOR_MODULE,), node.lineno))
                    continue
                if isinstance(v, ast.Name) and v.id in ours:  # module._x: that module exactly
                    target = ours[v.id]
                    if target != m.name and node.attr in modules[target].defines:
                        out.append(Access(m.name, node.attr, (target,), node.lineno))
                    continue
                if _root_name(v) in foreign or node.attr in TORCH_PRIVATES:
                    continue  # torch._C, sys._getframe, F._reduction, model._modules
                if node.attr in m.defines:
                    continue  # its own name, on another instance of its own class
                others = tuple(sorted(definers.get(node.attr, set()) - {m.name}))
                if others:
                    out.append(Access(m.name, node.attr, others, node.lineno))
    return sorted(out, key=lambda a: (a.module, a.name, a.line))


# -- the Doctor ----------------------------------------------------------------------------------
DOCTOR_MODULE = f"{PACKAGE}.doctor"


def _doctor_class(modules: dict[str, Module]) -> ast.ClassDef | None:
    m = modules.get(DOCTOR_MODULE)
    if m is None:
        return None
    return next(
        (n for n in m.tree.body if isinstance(n, ast.ClassDef) and n.name == "Doctor"), None
    )


def doctor_privates(modules: dict[str, Module]) -> set[str]:
    """The private names the Doctor class defines: methods, class attributes, self._x."""
    cls = _doctor_class(modules)
    if cls is None:
        return set()
    names: set[str] = set()
    _body_names(cls.body, names)
    return {n for n in names | _self_attributes(cls) if _is_private(n)}


def doctor_metrics(modules: dict[str, Module]) -> dict:
    m = modules.get(DOCTOR_MODULE)
    if m is None:
        return {}
    lines = len(m.path.read_text(encoding="utf-8").splitlines())
    cls = _doctor_class(modules)
    if cls is None:
        return {"file_lines": lines}
    start = min([cls.lineno] + [d.lineno for d in cls.decorator_list])
    methods = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return {
        "file_lines": lines,
        "class_lines": cls.end_lineno - start + 1,
        "methods": len(methods),
        "attributes": len(_self_attributes(cls, private_only=False)),
        "private_names": sorted(doctor_privates(modules)),
    }


# -- duplicates ----------------------------------------------------------------------------------
def _duplicates_in(folder: Path) -> int | None:
    exe = shutil.which("duplicates")
    if exe is None:
        return None
    run = subprocess.run(
        [exe, "--most", "200", "--seconds", "120"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    first = run.stdout.splitlines()[0] if run.stdout else ""
    if first.startswith("no duplicates"):
        return 0
    found = re.match(r"(\d+) pairs? of places", first)
    return int(found[1]) if found else None


def duplicates(src: Path) -> dict:
    if shutil.which("duplicates") is None:
        return {"available": False}
    out = {"available": True, "pairs": _duplicates_in(src)}
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    scen = src / PACKAGE / "scenarios"
    with tempfile.TemporaryDirectory() as tmp:
        inside, outside = Path(tmp, "inside"), Path(tmp, "outside")
        shutil.copytree(scen, inside / PACKAGE / "scenarios", ignore=skip)
        shutil.copytree(
            src,
            outside,
            ignore=lambda d, names: (
                set(skip(d, names)) | ({"scenarios"} if Path(d) == src / PACKAGE else set())
            ),
        )
        out["pairs_inside_scenarios"] = _duplicates_in(inside)
        out["pairs_outside_scenarios"] = _duplicates_in(outside)
    return out


# -- report --------------------------------------------------------------------------------------
def measure(src: Path, with_duplicates: bool = True) -> dict:
    modules = load(src)
    accesses = private_accesses(modules)
    doctor = doctor_metrics(modules)
    doctor_names = set(doctor.get("private_names", ()))
    doctor_mod = DOCTOR_MODULE
    every = import_graph(modules, module_level_only=False)
    at_import = import_graph(modules, module_level_only=True)
    grouped: dict[tuple[str, str, tuple[str, ...]], list[int]] = defaultdict(list)
    for a in accesses:
        grouped[(a.module, a.name, a.defined_in)].append(a.line)
    crossing = [a for a in accesses if a.crosses_package]
    to_doctor = [
        a
        for a in accesses
        if a.module != doctor_mod and doctor_mod in a.defined_in and a.name in doctor_names
    ]
    return {
        "src": str(src),
        "modules": len(modules),
        "unparsed": list(UNPARSED),
        "doctor": {k: v for k, v in doctor.items() if k != "private_names"},
        "private_access": {
            "count": len(accesses),
            "distinct": len(grouped),
            "crossing_packages": len(crossing),
            "crossing_packages_distinct": len({(a.module, a.name) for a in crossing}),
            "doctor_private_from_outside": len(to_doctor),
            "doctor_private_names_used_outside": sorted({a.name for a in to_doctor}),
            "list": [
                {"module": k[0], "name": k[1], "defined_in": list(k[2]), "lines": v}
                for k, v in sorted(grouped.items())
            ],
        },
        "import_cycles": {
            "all_imports": cycles(every),
            "module_level": cycles(at_import),
            "hidden_edges": hidden_edges(every, at_import),
        },
        "duplicates": duplicates(src) if with_duplicates else {"available": False, "skipped": True},
    }


def _short(module: str) -> str:
    return module.removeprefix(f"{PACKAGE}.")


def render(r: dict) -> str:
    d, p, c, dup = r["doctor"], r["private_access"], r["import_cycles"], r["duplicates"]
    lines = [f"src: {r['src']} ({r['modules']} modules)", ""]
    if r["unparsed"]:
        lines[-1:] = [f"not parsed (syntax errors): {', '.join(r['unparsed'])}", ""]
    if d:
        lines += [
            f"doctor.py: {d['file_lines']} lines; class Doctor: {d.get('class_lines', '-')} lines,"
            f" {d.get('methods', '-')} methods, {d.get('attributes', '-')} self.x attributes",
            "",
        ]
    lines += [
        f"private cross-module accesses: {p['count']} ({p['distinct']} distinct"
        " (module, name, defined in))",
        f"  crossing a package boundary: {p['crossing_packages']}"
        f" ({p['crossing_packages_distinct']} distinct (module, name))",
        f"  Doctor privates used outside doctor.py: {p['doctor_private_from_outside']}"
        f" ({len(p['doctor_private_names_used_outside'])} names:"
        f" {', '.join(p['doctor_private_names_used_outside'])})",
    ]
    for e in p["list"]:
        home = package_of(e["module"])
        cross = "X" if all(package_of(x) != home for x in e["defined_in"]) else " "
        lines.append(
            f"  {cross} {_short(e['module'])}: {e['name']} <- "
            f"{', '.join(map(_short, e['defined_in']))} (line {', '.join(map(str, e['lines']))})"
        )
    lines.append("  (X: crosses a package boundary)")
    lines.append("")
    for label, key in (("all imports", "all_imports"), ("module-level imports", "module_level")):
        lines.append(f"import cycles, {label}: {len(c[key])}")
        lines += [f"  {len(comp)}: {', '.join(map(_short, comp))}" for comp in c[key]]
        if key == "all_imports":
            lines.append(
                f"  imports in functions or under TYPE_CHECKING inside those cycles:"
                f" {len(c['hidden_edges'])}"
                f" ({', '.join(f'{_short(a)} -> {_short(b)}' for a, b in c['hidden_edges'])})"
            )
    lines.append("")
    if dup.get("available"):
        lines.append(
            f"duplicates pairs in src/: {dup['pairs']} (inside scenarios/:"
            f" {dup['pairs_inside_scenarios']}, outside scenarios/: {dup['pairs_outside_scenarios']})"
        )
    elif dup.get("skipped"):
        lines.append("duplicates: skipped (--no-duplicates)")
    else:
        lines.append("duplicates: the command is not on PATH")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent / "src")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--no-duplicates", action="store_true", help="skip the duplicates runs")
    args = ap.parse_args(argv)
    report = measure(args.src.resolve(), with_duplicates=not args.no_duplicates)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
