"""Walking a loss's autograd graph: shared by the probes that read it (no torch op is run)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch

from ._source import user_line_in_traceback

# Autograd nodes that only move, reshape or copy values (views, clones, dtype copies): a walk
# looking for what made a tensor looks below them (`softmax(x).view(-1, C)` was made by softmax).
VIEW_NODES = frozenset(
    {
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "UnsqueezeBackward0",
        "CloneBackward0",
        "ToCopyBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "TBackward0",
        "ExpandBackward0",
        "SliceBackward0",
        "SelectBackward0",
        "FlattenBackward0",
        "ContiguousBackward0",
    }
)


def graph_nodes(root: torch.Tensor, limit: int) -> Iterator[object]:
    """The autograd nodes reachable from `root`, breadth-first (nearest the loss first), each
    once, at most `limit` of them. A consumer may stop early: the walk is lazy."""
    seen: set[int] = set()
    frontier = deque([root.grad_fn])
    while frontier and len(seen) < limit:
        node = frontier.popleft()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        frontier.extend(fn for fn, _ in node.next_functions)


def below_views(node: Any, limit: int) -> Any:
    """The first node at or under `node` that is not a view (VIEW_NODES), down a view's one
    input, at most `limit` views down (then the view reached); None where a view ends."""
    for _ in range(limit):
        if node is None or type(node).__name__ not in VIEW_NODES:
            return node
        nxt = [c for c, _ in node.next_functions if c is not None]
        if len(nxt) != 1:
            return node
        node = nxt[0]
    return node


def node_source(node: object) -> str | None:
    """The user line that created an autograd node, when the graph was built under anomaly
    mode (which records each node's forward traceback); None otherwise."""
    try:
        frames = node.metadata.get("traceback_")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return None
    return user_line_in_traceback(frames) if frames else None
