"""The user's line that built the DataLoader a training loop iterates (TD604 names it).

Read from the source, never from the running frames' locals (reading `f_locals` of a running
function keeps a snapshot of its locals alive on Python 3.11): for each user frame on the stack
(the training loop, at `optimizer.step()`), the innermost `for` statement around its current
line whose iterable is a name or an attribute (`loader`, `self.train_loader`, also inside
`enumerate(...)`, `tqdm(...)`, `iter(...)`), and the last assignment to that same name before
the loop, in the same function, whose value calls something named `*DataLoader`. Nothing is
returned when the loop iterates anything else: no guess."""

from __future__ import annotations

import ast
import functools
import sys
from typing import Any

from .._source import is_user_file, relpath

MAX_FRAMES = 32
WRAPPERS = frozenset(("enumerate", "tqdm", "iter", "zip", "islice"))


MAX_BYTES = 1 << 20  # a larger file is not parsed (~0.1 s per 1,000 lines under load)


@functools.lru_cache(maxsize=64)
def _tree(filename: str) -> ast.Module | None:
    try:
        with open(filename, encoding="utf-8") as fh:
            text = fh.read(MAX_BYTES + 1)
        if len(text) > MAX_BYTES:
            return None
        return ast.parse(text, filename)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None


def _iterated(node: ast.expr) -> str | None:
    """The source text of the loader a `for` iterates: `loader`, `self.loader`, unwrapped from
    enumerate()/tqdm()/iter()/zip()'s first argument."""
    while isinstance(node, ast.Call) and node.args:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name not in WRAPPERS:
            return None
        node = node.args[0]
    if isinstance(node, ast.Name | ast.Attribute):
        return ast.unparse(node)
    return None


def _calls_dataloader(value: ast.expr) -> bool:
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    return isinstance(name, str) and name.endswith("DataLoader")


def _scopes(tree: ast.Module, line: int) -> list[ast.AST]:
    """The function definitions around `line`, innermost first, then the module."""
    out: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            end = getattr(node, "end_lineno", None) or node.lineno
            if node.lineno <= line <= end:
                out.append(node)
    out.sort(key=lambda n: -n.lineno)
    return [*out, tree]


def _in_scope(scope: ast.AST) -> list[ast.AST]:
    """The nodes of `scope` outside nested function and class definitions."""
    out: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def built_at(filename: str, line: int) -> dict[str, str] | None:
    """{built, iterated} (`path:line`) of the DataLoader the `for` loop around `line` of
    `filename` iterates, or None."""
    tree = _tree(filename)
    if tree is None:
        return None
    for scope in _scopes(tree, line):
        nodes = _in_scope(scope)
        loops = [
            n
            for n in nodes
            if isinstance(n, ast.For | ast.AsyncFor)
            and n.lineno <= line <= (getattr(n, "end_lineno", None) or n.lineno)
        ]
        for loop in sorted(loops, key=lambda n: -n.lineno):  # innermost first
            target = _iterated(loop.iter)
            if target is None:
                continue
            built = [
                n
                for n in nodes
                if isinstance(n, ast.Assign | ast.AnnAssign)
                and n.lineno < loop.lineno
                and n.value is not None
                and _calls_dataloader(n.value)
                and any(
                    ast.unparse(t) == target
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                )
            ]
            if built:
                last = max(built, key=lambda n: n.lineno)
                where = relpath(filename)
                return {"built": f"{where}:{last.lineno}", "iterated": f"{where}:{loop.lineno}"}
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef) and loops:
            return None  # the loop is here, iterating something not built here
    return None


def find(skip: int = 1) -> dict[str, str] | None:
    """`built_at` for the user frames on the current stack, innermost first."""
    frame: Any = sys._getframe(skip)
    for _ in range(MAX_FRAMES):
        if frame is None:
            return None
        filename = frame.f_code.co_filename
        if is_user_file(filename):
            found = built_at(filename, frame.f_lineno)
            if found is not None:
                return found
        frame = frame.f_back
    return None
