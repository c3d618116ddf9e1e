"""Next-token leak (TD524): does the prediction at a position read the token it is asked for?

For a class loss whose (batch, time) targets are the token ids an `nn.Embedding` of the same
graph read, shifted by one along time (`targets[:, t] == ids[:, t + 1]`, batch-first, or
`targets[t] == ids[t + 1]`, sequence-first; the loss-inputs probe's graph walk finds the
embedding's backward node and its saved ids), one experiment on the user's own graph, before
the user's backward: the gradient of the loss input at one position per row (the last valid
target that has a next position) with respect to the embedding's output (a `GradientEdge` of
its backward node), `torch.autograd.grad(..., retain_graph=True)`. A causal model gives
exactly zero at the next position (the one holding the target's id); a model whose attention
sees the whole sequence does not. Nothing the training reads changes: `.grad` is not touched,
the graph is kept for the user's backward, the CPU RNG state is put back, and the experiment is
not run where an extra backward could act: module backward hooks, autograd Functions written
in Python (reentrant activation checkpointing's among them), batch norm (it mixes positions
and a recompute would update its statistics), a distributed job (DDP, FSDP), a compiled
region, or a graph too large to walk. Non-reentrant checkpointing recomputes its segment
under the RNG state it saved: the gradients and the RNG after the step are the same.
Tensor hooks a script registered on intermediate tensors of the forward would be called once
more (torch has no way to list them): a known limit.
"""

from __future__ import annotations

from typing import Any

import torch

NEXT_SHARE = 0.99  # share of the valid targets equal to the next position's id
ROWS = 16  # rows (sequences) queried: one position each
FREE_FACTOR = 4  # free GPU memory needed, in multiples of the loss input's bytes
# Node kinds under which the extra backward is not run (see the module docstring).
_UNSAFE = ("BatchNorm", "DDPSink", "CompiledFunction", "BackwardHookFunction", "Checkpoint")


def unsafe_node(node: Any, kind: str) -> bool:
    """Whether an extra backward through this node could act (see the module docstring)."""
    return any(u in kind for u in _UNSAFE) or isinstance(
        node, torch.autograd.function.BackwardCFunction
    )


def memory_allows(inp: torch.Tensor) -> bool:
    """The extra backward holds a gradient of the loss input's size (the logits, often the
    largest tensor of a language model) and the activations' gradients: on a GPU it runs only
    when the free memory is at least FREE_FACTOR times the loss input's bytes."""
    if inp.device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(inp.device)
    return free >= FREE_FACTOR * inp.numel() * inp.element_size()


def _grid_targets(tgt: torch.Tensor, d0: int, n: int) -> torch.Tensor | None:
    if tgt.numel() != d0 * n:
        return None
    return tgt.detach().long().reshape(d0, n)


def _queries(
    t2: torch.Tensor, x: torch.Tensor, ignore: int, dim: int, offset: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(share of the valid targets equal to the next id along `dim`, each row's last valid
    target left out (an end token, whose next input is padding or nothing); per row the
    query position: the last target equal to the next id, -1 where none)."""
    if dim == 0:  # sequence-first: transpose to (rows, time)
        t2, x = t2.t(), x.t()
    rows, n = t2.shape
    length = x.shape[1]
    m = min(n, length - offset - 1)  # targets whose next id exists
    if m < 1:
        return None
    pos = torch.arange(n, device=t2.device).expand(rows, n)
    valid = t2 != ignore
    end = torch.where(valid, pos, torch.full_like(pos, -1)).amax(dim=1, keepdim=True)
    tt, pos = t2[:, :m], pos[:, :m]
    keep = valid[:, :m] & (pos != end)
    same = (tt == x[:, offset + 1 : offset + 1 + m]) & valid[:, :m]
    share = (same & keep).sum().double() / keep.sum().clamp(min=1)
    last = torch.where(same, pos, torch.full_like(pos, -1)).amax(dim=1)
    return share, last


def measure(
    inp: torch.Tensor, tgt: torch.Tensor, ignore: int, found: list[tuple[Any, torch.Tensor, int]]
) -> dict[str, torch.Tensor]:
    """`found`: (embedding backward node, the (d0, d1) ids it read, offset of the targets'
    positions in them). Returns `nt_share`, `nt_dep`, `nt_dim`, `nt_rows` or {}."""
    if inp.dim() not in (2, 3) or inp.dim() != tgt.dim() + 1 or not inp.requires_grad:
        return {}
    picked = []  # (node, x, time dim, offset, queries per row, share)
    for node, x, offset in found:
        if x.dim() != 2 or x.device != tgt.device:
            continue
        x = x.long()
        d0, d1 = x.shape
        if offset == 0 and tgt.numel() == x.numel():
            t2 = _grid_targets(tgt, d0, d1)
            dims = (1, 0)
        else:
            t2 = _grid_targets(tgt, d0, tgt.numel() // d0) if tgt.numel() % d0 == 0 else None
            dims = (1,)  # targets cut from ids read over more positions: batch-first
        if t2 is None:
            continue
        same = (t2 == x).double().mean() if t2.shape == x.shape else None
        if same is not None and float(same) >= 0.5:
            continue  # constant runs: the same id and the next one alike, nothing told apart
        best = None
        for dim in dims:
            q = _queries(t2, x, ignore, dim, offset if dim == 1 else 0)
            if q is not None and float(q[0]) >= NEXT_SHARE:
                best = (dim, q)
                break
        if best is not None:
            picked.append((node, x, best[0], offset, best[1][1], best[1][0], t2.shape))
    if not picked:
        return {}
    # One backward for every embedding read at the first one's (row, position) grid.
    picked = [
        p
        for p in picked
        if (p[2], p[3], p[1].shape) == (picked[0][2], picked[0][3], picked[0][1].shape)
    ]
    go = torch.zeros_like(inp)
    gen = torch.Generator().manual_seed(0)
    classes = int(inp.shape[1])
    w = torch.randn(classes, generator=gen, dtype=torch.float64).to(inp.device, inp.dtype)
    node, x, dim, offset, last, share, shape = picked[0]
    rows = [r for r in range(len(last)) if int(last[r]) >= 0][:ROWS]
    if not rows:
        return {}
    for r in rows:
        j = int(last[r])
        i0, i1 = (r, j) if dim == 1 else (j, r)
        if inp.dim() == 3:
            go[i0, :, i1] = w
        else:
            go[i0 * shape[1] + i1] = w
    edges = [torch.autograd.graph.GradientEdge(p[0], 0) for p in picked]
    state = torch.get_rng_state()
    try:
        grads = torch.autograd.grad(
            [inp], edges, grad_outputs=[go], retain_graph=True, allow_unused=True
        )
    finally:
        torch.set_rng_state(state)
    deps = []
    for (_node, x, dim, offset, _last, _share, _shape), g in zip(picked, grads):
        if g is None or g.dim() != 3 or tuple(g.shape[:2]) != tuple(x.shape):
            return {}
        norms = g.detach().double().norm(dim=-1)  # (d0, d1)
        if dim == 0:
            norms = norms.t()
        worst = torch.zeros((), dtype=torch.float64, device=norms.device)
        for r in rows:
            j = int(last[r]) + offset
            own, nxt = norms[r, j], norms[r, j + 1]
            dep = nxt / (own + nxt).clamp(min=1e-300)
            worst = torch.maximum(worst, dep)
        deps.append(worst)
    return {
        "nt_share": min((p[5] for p in picked), key=float).double(),
        "nt_dep": torch.stack(deps).amin(),
        "nt_dim": torch.tensor(float(picked[0][2]), dtype=torch.float64),
        "nt_rows": torch.tensor(float(len(rows)), dtype=torch.float64),
    }
