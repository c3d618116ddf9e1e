"""Gradient-path walk throughput: nodes/second on a small transformer's loss graph (tens of
thousands of autograd nodes), against a plain backward, at growing depth to show the walk is
linear in the number of nodes (no quadratic blow-up).

Two walks: `full` hooks every node (what `explain_gradients` does), `focused` hooks the nodes
that can carry a verdict: the traced loss code and ops that can zero a gradient (what the
sampled walks of `watch()` do; the loss code is traced as watch() traces it).

    python bench/gradpath.py [--device cpu|cuda] [--layers 4 8 16 32]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn as nn

from traindoctor.gradpath import Walk, explain_gradients, trace_lines


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, -1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1).to(x.device), -1e9)
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, layers: int, d: int = 32, vocab: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)


def loss_of(model: nn.Module, idx: torch.Tensor, chunks: int, traced: bool = False) -> torch.Tensor:
    # Per-chunk losses summed: many small ops in the loss code as well, like a detector's.
    logits = model(idx)
    with trace_lines() if traced else contextlib.nullcontext():
        return _chunked_loss(logits, idx, chunks)


def _chunked_loss(logits: torch.Tensor, idx: torch.Tensor, chunks: int) -> torch.Tensor:
    parts = [
        nn.functional.cross_entropy(c.reshape(-1, c.shape[-1]), t.reshape(-1))
        for c, t in zip(logits.chunk(chunks, 1), idx.roll(-1, 1).chunk(chunks, 1))
    ]
    return torch.stack(parts).mean()


def measure(layers: int, device: str, repeats: int = 5) -> dict[str, float]:
    torch.manual_seed(0)
    model = TinyGPT(layers).to(device)
    idx = torch.randint(0, 64, (4, 64), device=device)
    times: dict[str, list[float]] = {"plain": [], "full": [], "focused": []}
    nodes = measured = 0
    for _ in range(repeats):
        for kind in times:
            loss = loss_of(model, idx, 64, traced=kind == "focused")
            _sync(device)
            t0 = time.perf_counter()
            if kind == "plain":
                loss.backward()
            elif kind == "full":
                nodes = len(explain_gradients(loss).nodes)
            else:
                walk = Walk(loss, focus=True)
                loss.backward()
                measured = len(walk.finish().nodes)
            _sync(device)
            times[kind].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    p, w, f = (min(times[k]) for k in ("plain", "full", "focused"))
    return {
        "layers": layers,
        "nodes": nodes,
        "measured": measured,
        "walk_s": w,
        "focused_s": f,
        "plain_s": p,
        "nodes_per_s": nodes / w,
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, nargs="+", default=[16, 64, 256, 512])
    args = ap.parse_args()
    rows = [measure(n, args.device) for n in args.layers]
    print(f"device {args.device}, torch {torch.__version__}")
    print(
        f"{'layers':>6} {'nodes':>7} {'plain s':>8} {'full s':>8} {'x plain':>8} {'nodes/s':>9}"
        f" {'focused':>8} {'measured':>8} {'x plain':>8}"
    )
    for r in rows:
        print(
            f"{r['layers']:>6} {r['nodes']:>7} {r['plain_s']:>8.3f} {r['walk_s']:>8.3f} "
            f"{r['walk_s'] / r['plain_s']:>8.2f} {r['nodes_per_s']:>9.0f} {r['focused_s']:>8.3f}"
            f" {r['measured']:>8} {r['focused_s'] / r['plain_s']:>8.2f}"
        )
    first, last = rows[0], rows[-1]
    growth = (last["walk_s"] / first["walk_s"]) / (last["nodes"] / first["nodes"])
    print(f"time growth / node growth from {first['nodes']} to {last['nodes']} nodes: {growth:.2f}")


if __name__ == "__main__":
    main()
