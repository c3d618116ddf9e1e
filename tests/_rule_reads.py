"""What each rule reads from the timeline, found by walking the AST of its module and of the
private helpers it calls (rules/_util.py, rules/<family>/_*.py): the static half of the
probe -> rule contract check in test_catalog.py (the strict view in testing.py is the other).

Best effort, on purpose simple: a read is a string literal (or a module-level string constant,
or a loop variable over a tuple of literals) passed to `tl.series/events/fact/signal_names`, or
`tl.facts[...]`/`tl.facts.get(...)`. Payload keys are `e["k"]`/`e.get("k")` on a name bound to
an element of `tl.events("kind")` (a for/comprehension target, `xs[i]`, `next(...)`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import traindoctor.rules as _rules_pkg

RULES_DIR = Path(_rules_pkg.__file__).parent
VIEW_NAMES = {"tl", "view"}  # what rule code calls the TimelineView (checked by a test)
# Attributes of helper objects that hold events: `Site.facts` (rules/setup/_loss_inputs.py) is
# a site's first `loss_input` event, `Site.events` all of them.
HELD = {"facts": "loss_input"}
HELD_LISTS = {"events": "loss_input"}


@dataclass
class Reads:
    signals: set[str] = field(default_factory=set)
    signal_prefixes: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)
    facts: set[str] = field(default_factory=set)
    payload: dict[str, set[str]] = field(default_factory=dict)  # event kind -> keys read
    dynamic: set[str] = field(default_factory=set)  # reads whose name is not a literal

    def update(self, other: Reads) -> None:
        self.signals |= other.signals
        self.signal_prefixes |= other.signal_prefixes
        self.events |= other.events
        self.facts |= other.facts
        self.dynamic |= other.dynamic
        for k, v in other.payload.items():
            self.payload.setdefault(k, set()).update(v)


def _str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


class _Module:
    """One parsed module: its functions, string constants and imports of rule helpers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text("utf-8"))
        self.functions: dict[str, ast.FunctionDef] = {}
        self.constants: dict[str, str] = {}
        self.imports: dict[str, tuple[Path, str]] = {}  # local name -> (module path, name)
        self.module_aliases: dict[str, Path] = {}  # local name -> a rule-package module
        for node in self.tree.body:
            if isinstance(node, ast.FunctionDef):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        self.functions[f"{node.name}.{item.name}"] = item
            elif isinstance(node, ast.Assign) and _str(node.value) is not None:
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        self.constants[t.id] = _str(node.value)  # type: ignore[assignment]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                target = base.joinpath(*(node.module or "").split(".")) if node.module else base
                file = target.with_suffix(".py")
                for alias in node.names:
                    local = alias.asname or alias.name
                    sub = target / f"{alias.name}.py"  # `from . import _helpers as h`
                    if sub.is_file() and sub.is_relative_to(RULES_DIR):
                        self.module_aliases[local] = sub
                    elif file.is_file() and file.is_relative_to(RULES_DIR):
                        self.imports[local] = (file, alias.name)


_CACHE: dict[Path, _Module] = {}


def _module(path: Path) -> _Module:
    if path not in _CACHE:
        _CACHE[path] = _Module(path)
    return _CACHE[path]


def _is_view(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id in VIEW_NAMES


Bindings = dict[str, list[str]]  # a helper's parameter -> the literals its callers pass


def _names(
    mod: _Module, fn: ast.AST, node: ast.AST, bound: Bindings | None = None
) -> list[str] | None:
    """The strings `node` stands for: a literal, a module constant, a parameter its callers pass
    literals to, or a loop variable over a tuple of literals in `fn`. None when unknown."""
    s = _str(node)
    if s is not None:
        return [s]
    if isinstance(node, ast.Name):
        if bound and node.id in bound:
            return bound[node.id]
        if node.id in mod.constants:
            return [mod.constants[node.id]]
        for n in ast.walk(fn):
            if (
                isinstance(n, ast.For | ast.comprehension)
                and isinstance(n.target, ast.Name)
                and n.target.id == node.id
                and isinstance(n.iter, ast.Tuple | ast.List)
            ):
                vals = [_str(e) for e in n.iter.elts]
                if all(v is not None for v in vals):
                    return vals  # type: ignore[return-value]
    return None


def _direct_reads(mod: _Module, fn: ast.AST, bound: Bindings | None = None) -> Reads:
    reads = Reads()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr, recv = node.func.attr, node.func.value
            if _is_view(recv) and attr in ("series", "events", "fact", "signal_names"):
                arg = node.args[0] if node.args else None
                if arg is None:
                    reads.dynamic.add(f"{attr}()")
                    continue
                names = _names(mod, fn, arg, bound)
                if names is None:
                    reads.dynamic.add(f"{attr}({ast.unparse(arg)})")
                    continue
                target = {
                    "series": reads.signals,
                    "events": reads.events,
                    "fact": reads.facts,
                    "signal_names": reads.signal_prefixes,
                }[attr]
                target.update(names)
            elif (
                attr == "get"
                and isinstance(recv, ast.Attribute)
                and recv.attr == "facts"
                and _is_view(recv.value)
                and node.args
            ):
                reads.facts.update(_names(mod, fn, node.args[0]) or ())
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "facts"
            and _is_view(node.value.value)
        ):
            names = _names(mod, fn, node.slice)
            if names is None:
                reads.dynamic.add(f"facts[{ast.unparse(node.slice)}]")
            else:
                reads.facts.update(names)
    _payload_reads(mod, fn, reads)
    return reads


def _payload_reads(mod: _Module, fn: ast.AST, reads: Reads) -> None:
    """Keys read from the events of a kind (see the module docstring)."""
    lists: dict[str, set[str]] = {}  # name -> kinds of the events list it holds
    items: dict[str, set[str]] = {}  # name -> kinds of the event it holds

    def list_kinds(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "events" and _is_view(f.value):
                return set(_names(mod, fn, node.args[0]) or ()) if node.args else set()
            if isinstance(f, ast.Name) and f.id in ("list", "sorted", "reversed") and node.args:
                return list_kinds(node.args[0])
        if isinstance(node, ast.Name):
            return lists.get(node.id, set())
        if isinstance(node, ast.BinOp):
            return list_kinds(node.left) | list_kinds(node.right)
        if isinstance(node, ast.Attribute) and node.attr in HELD_LISTS:
            return {HELD_LISTS[node.attr]}
        if isinstance(node, ast.ListComp | ast.GeneratorExp):
            gen = node.generators[0]
            same = isinstance(node.elt, ast.Name) and isinstance(gen.target, ast.Name)
            if same and node.elt.id == gen.target.id:  # type: ignore[union-attr]
                return list_kinds(gen.iter)
        return set()

    def item_kinds(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Name):
            return items.get(node.id, set())
        if isinstance(node, ast.Attribute) and not _is_view(node.value) and node.attr in HELD:
            return {HELD[node.attr]}
        if isinstance(node, ast.Subscript) and _str(node.slice) is None:
            return list_kinds(node.value)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "next"
            and node.args
        ):
            arg = node.args[0]
            if isinstance(arg, ast.Call) and getattr(arg.func, "id", None) in ("iter", "reversed"):
                return list_kinds(arg.args[0]) if arg.args else set()
            return list_kinds(arg)
        return set()

    for _ in range(3):  # a few passes: bindings before and after their uses
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                t = node.targets[0]
                if isinstance(t, ast.Name):
                    if k := list_kinds(node.value):
                        lists.setdefault(t.id, set()).update(k)
                    if k := item_kinds(node.value):
                        items.setdefault(t.id, set()).update(k)
            elif (
                isinstance(node, ast.For | ast.comprehension)
                and isinstance(node.target, ast.Name)
                and (k := list_kinds(node.iter))
            ):
                items.setdefault(node.target.id, set()).update(k)

    def visit(node: ast.AST, scope: dict[str, set[str]]) -> None:
        # A for loop or comprehension rebinds its target inside its own body only: the same
        # name `e` over two kinds in two loops must not mix their keys.
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            inner = {**scope, node.target.id: list_kinds(node.iter)}
            visit(node.iter, scope)
            for child in node.body + node.orelse:
                visit(child, inner)
            return
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            inner = dict(scope)
            for gen in node.generators:
                visit(gen.iter, inner)
                if isinstance(gen.target, ast.Name):
                    inner[gen.target.id] = list_kinds(gen.iter)
                for cond in gen.ifs:
                    visit(cond, inner)
            for part in (node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,):
                visit(part, inner)
            return
        key, recv = None, None
        if isinstance(node, ast.Subscript) and _str(node.slice) is not None:
            key, recv = _str(node.slice), node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and _str(node.args[0]) is not None
        ):
            key, recv = _str(node.args[0]), node.func.value
        if key is not None and recv is not None:
            kinds = scope[recv.id] if isinstance(recv, ast.Name) and recv.id in scope else None
            for kind in kinds if kinds is not None else item_kinds(recv):
                reads.payload.setdefault(kind, set()).add(key)
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(fn, {})


def _calls(mod: _Module, fn: ast.AST) -> list[tuple[Path, str, Bindings]]:
    """Rule-package functions `fn` calls (this module's own, and helpers imported from others),
    with the string literals passed to their parameters."""
    out = []
    for node in ast.walk(fn):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in mod.functions:
            path, target = mod.path, f.id
        elif isinstance(f, ast.Name) and f.id in mod.imports:
            path, target = mod.imports[f.id]
        elif (
            isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Name)
            and f.value.id in mod.module_aliases
        ):
            path, target = mod.module_aliases[f.value.id], f.attr
        else:
            continue
        callee = _module(path).functions.get(target)
        bound: Bindings = {}
        if callee is not None:
            params = [a.arg for a in callee.args.args]
            for i, arg in enumerate(node.args[: len(params)]):
                if (lit := _names(mod, fn, arg)) is not None:
                    bound[params[i]] = lit
            for kw in node.keywords:
                if kw.arg and (lit := _names(mod, fn, kw.value)) is not None:
                    bound[kw.arg] = lit
        out.append((path, target, bound))
    return out


def function_reads(
    path: Path,
    name: str,
    _seen: set[tuple[Path, str, str]] | None = None,
    bound: Bindings | None = None,
) -> Reads:
    """Reads of one function and, transitively, of the rule-package functions it calls."""
    seen = _seen if _seen is not None else set()
    seen.add((path, name, repr(sorted((bound or {}).items()))))
    mod = _module(path)
    reads = Reads()
    fn = mod.functions.get(name)
    if fn is None:
        # An imported class (a helper's dataclass): its methods' reads count.
        for key, method in mod.functions.items():
            if key.startswith(f"{name}."):
                reads.update(_direct_reads(mod, method))
        return reads
    reads.update(_direct_reads(mod, fn, bound))
    for cpath, cname, cbound in _calls(mod, fn):
        if (cpath, cname, repr(sorted(cbound.items()))) not in seen:
            reads.update(function_reads(cpath, cname, seen, cbound))
    return reads


def module_reads(path: Path) -> Reads:
    """Everything a rule module reads: each of its functions and the helpers they call."""
    mod = _module(path)
    reads = Reads()
    seen: set[tuple[Path, str, str]] = set()
    for name in mod.functions:
        if "." not in name:
            reads.update(function_reads(path, name, seen))
    return reads
