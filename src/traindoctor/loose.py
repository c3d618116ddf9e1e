"""Trained tensors that belong to no nn.Module: `w = torch.randn(..., requires_grad=True)`,
`nn.Parameter` made by hand, `parameters = [C, W1, b1]` (makemore, d2l, the old tutorials).

Zero-code mode finds them as the leaves of the first backward's graph and names them as the
script does (`w1`, `params[0]`); `LooseTensors` then holds them as a model's params, so the
probes see them like any other. Only references are kept: no value is read or changed.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from ._source import is_user_file

MAX_NODES = 100_000  # autograd nodes walked at most to find the leaves


class LooseTensors(torch.nn.Module):
    """The trained tensors of a script that has no nn.Module, under the script's names.
    Never called; `named_parameters()` yields the tensors themselves."""

    def __init__(self, named: list[tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        for name, tensor in named:
            # Not register_parameter: it takes nn.Parameter only, and a plain leaf must stay
            # the user's very tensor.
            self._parameters[name] = tensor  # type: ignore[assignment]


def graph_leaves(root: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors that `root.backward()` accumulates a gradient into, in graph order."""
    fn = getattr(root, "grad_fn", None)
    if fn is None:
        return [root] if root.requires_grad and root.is_leaf else []
    leaves: list[torch.Tensor] = []
    seen_leaves: set[int] = set()
    seen: set[int] = set()
    stack = [fn]
    while stack and len(seen) < MAX_NODES:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad
        if isinstance(variable, torch.Tensor) and id(variable) not in seen_leaves:
            seen_leaves.add(id(variable))
            leaves.append(variable)
        for nxt, _ in reversed(getattr(node, "next_functions", ())):
            if nxt is not None:
                stack.append(nxt)
    return leaves


def name_tensors(tensors: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) with the names the user's code binds them to (`w1`; `params[0]` for a
    list, `p['w']` for a dict), looked up in the user's frames on the stack, innermost first;
    `tensor<i>` when none. Ordered as the script names them."""
    wanted = {id(t): t for t in tensors}
    named: dict[int, str] = {}
    frame: Any = sys._getframe(1)
    scopes = []
    # Innermost first, and no frame further out once every tensor has a variable's name:
    # on Python < 3.13 `frame.f_locals` snapshots a function frame's locals into a dict the
    # frame keeps (a batch, a model its code later `del`s stay alive until it returns), so
    # only the frames needed are read. (A module's frame reads its globals: no snapshot.)
    while frame is not None and len(named) < len(wanted):
        if is_user_file(frame.f_code.co_filename):
            here = [frame.f_locals]
            if frame.f_globals is not here[0]:
                here.append(frame.f_globals)
            for scope in here:  # variables bound to the tensor itself first
                for name, value in list(scope.items()):
                    if isinstance(value, torch.Tensor) and id(value) in wanted:
                        named.setdefault(id(value), name)
            scopes += here
        frame = frame.f_back
    del frame
    for scope in scopes:  # then lists, tuples and dicts of them
        for name, value in list(scope.items()):
            if len(named) == len(wanted):
                break
            if isinstance(value, list | tuple):
                items: Any = enumerate(value)
            elif isinstance(value, dict):
                items = ((repr(k), v) for k, v in value.items())
            else:
                continue
            for key, item in items:
                if isinstance(item, torch.Tensor) and id(item) in wanted:
                    named.setdefault(id(item), f"{name}[{key}]")
    out = [(named[i], wanted[i]) for i in named]
    used = set(named.values())
    for k, t in enumerate(t for t in tensors if id(t) not in named):
        name = f"tensor{k}"
        while name in used:
            name += "_"
        out.append((name, t))
    return out
