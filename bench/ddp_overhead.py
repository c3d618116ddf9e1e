"""Overhead of traindoctor on a 2-rank DDP job (torchrun --standalone, gloo, CPU, one thread per
rank), side by side with the same job without it.

Two models: a small MLP (8 Linear+GELU layers, width 256, batch 64; ~0.5M params) and a small
GPT-ish causal transformer (2 pre-LN blocks, d=64, 4 heads, seq 32, vocab 128, batch 16).
Each job trains N steps with `td.watch(ddp_model, opt, console=False)` or plainly, and each
rank times every step (zero_grad, forward, backward with DDP's all-reduce, optimizer step:
perf_counter around the whole step) and, watched, `doc.close()` (detach, final rules, the
rank's report, and the job's merge: rank 0 waits for rank 1's files, 5 s at most). The jobs
alternate plain/watched, `--rounds` times each; the figures are medians over rounds of each
phase's median step time on rank 0, wall and CPU (the ranks move in lock step through the
all-reduce):
steps 1-3 (structural checks), 4-50, and the steady state 51-N, and the ratio watched/plain.

Usage: python bench/ddp_overhead.py [--steps 400] [--rounds 2] [--write bench/DDP_OVERHEAD.md]
Run on a quiet machine if you can; the load (`uptime`) is printed and written with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = (("steps 1-3", 1, 3), ("steps 4-50", 4, 50), ("steady (51-N)", 51, None))


def _model(kind: str):  # noqa: ANN202
    import torch
    import torch.nn as nn

    if kind == "mlp":
        layers: list[nn.Module] = [nn.Linear(32, 256), nn.GELU()]
        for _ in range(7):
            layers += [nn.Linear(256, 256), nn.GELU()]
        layers += [nn.Linear(256, 10)]
        model = nn.Sequential(*layers)

        def batch(g: torch.Generator):  # noqa: ANN202
            x = torch.randn(64, 32, generator=g)
            return x, x[:, :10].argmax(1)

        def loss_of(out, y):  # noqa: ANN001, ANN202
            return nn.functional.cross_entropy(out, y)

        return model, batch, loss_of

    vocab, seq, d = 128, 32, 64

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
            self.register_buffer("mask", torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1))

        def forward(self, x):  # noqa: ANN001, ANN202
            h = self.ln1(x)
            x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
            self.blocks = nn.Sequential(Block(), Block())
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

        def forward(self, idx):  # noqa: ANN001, ANN202
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
            return self.head(self.ln(self.blocks(x)))

    def batch(g: torch.Generator):  # noqa: ANN202
        start = torch.randint(0, vocab, (16, 1), generator=g)
        ids = (start + torch.arange(seq + 1)) % vocab
        return ids[:, :-1], ids[:, 1:]

    def loss_of(out, y):  # noqa: ANN001, ANN202
        return nn.functional.cross_entropy(out.reshape(-1, vocab), y.reshape(-1))

    return GPT(), batch, loss_of


def worker(kind: str, steps: int, watched: bool, out: Path, runs: Path) -> None:
    """One rank of the job (run by torchrun): trains, times, writes its figures to `out`."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    net, batch, loss_of = _model(kind)
    model = DDP(net)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    doc = None
    if watched:
        import traindoctor as td  # imported before the clock: attach alone is timed
    t0 = time.perf_counter()
    if watched:
        doc = td.watch(model, opt, out_dir=runs, console=False)
    attach_s = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(steps):
        x, y = batch(g)
        t, c = time.perf_counter(), time.process_time()
        opt.zero_grad()
        loss = loss_of(model(x), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    close_s = None
    if doc is not None:
        t = time.perf_counter()
        doc.close()
        close_s = time.perf_counter() - t
    result = {"rank": rank, "times": times, "cpu": cpu, "attach_s": attach_s, "close_s": close_s}
    Path(f"{out}.rank{rank}").write_text(json.dumps(result))
    dist.destroy_process_group()


def _job(kind: str, steps: int, watched: bool, tmp: Path) -> dict:
    out = tmp / f"{kind}-{'watched' if watched else 'plain'}-{time.monotonic_ns()}"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", __file__, "--worker"]
    cmd += ["--model", kind, "--steps", str(steps), "--out", str(out), "--runs", str(tmp / "runs")]
    cmd += ["--watched"] if watched else []
    # Plots as users get them (on): close() writes report.html with them.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"job failed ({kind}, watched={watched}):\n{p.stderr[-3000:]}")
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    return {"ranks": ranks, "job_wall_s": wall}


def _phase_medians(times: list[float]) -> dict[str, float]:
    return {
        name: statistics.median(times[lo - 1 : hi if hi is not None else len(times)])
        for name, lo, hi in PHASES
    }


def _ms(x: float) -> str:
    return f"{x * 1e3:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--watched", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--runs")
    ap.add_argument("--write")
    args = ap.parse_args()
    if args.worker:
        worker(args.model, args.steps, args.watched, Path(args.out), Path(args.runs))
        return

    import torch

    load_before = os.getloadavg()
    print(f"load: {load_before}; torch {torch.__version__}, 2 ranks, gloo, 1 thread per rank")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for kind in ("mlp", "gpt"):
            per: dict[bool, list[dict]] = {False: [], True: []}
            for r in range(args.rounds):
                # Alternate which goes first: a load that drifts does not favour one side.
                for watched in (False, True) if r % 2 == 0 else (True, False):
                    per[watched].append(_job(kind, args.steps, watched, tmp))
            row = {"model": kind}
            for watched, jobs in per.items():
                side = "watched" if watched else "plain"
                for clock in ("times", "cpu"):
                    phases = [_phase_medians(j["ranks"][0][clock]) for j in jobs]
                    for name, _, _ in PHASES:
                        row[f"{side} {clock} {name}"] = statistics.median(p[name] for p in phases)
                row[f"{side} job wall"] = statistics.median(j["job_wall_s"] for j in jobs)
                if watched:
                    row["close rank 0"] = statistics.median(j["ranks"][0]["close_s"] for j in jobs)
                    row["close rank 1"] = statistics.median(j["ranks"][1]["close_s"] for j in jobs)
                    row["attach"] = statistics.median(j["ranks"][0]["attach_s"] for j in jobs)
            rows.append(row)
            print(json.dumps(row))
    load_after = os.getloadavg()
    print(f"load after: {load_after}")

    lines = [
        "| model | phase | wall ms/step plain | watched | ratio | cpu ms/step plain | watched "
        "| ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name, _, _ in PHASES:
            cells = [row["model"], name]
            for clock in ("times", "cpu"):
                p, w = row[f"plain {clock} {name}"], row[f"watched {clock} {name}"]
                cells += [_ms(p), _ms(w), f"{w / p:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | attach s | close s, rank 0 (merge incl.) | close s, rank 1 "
        "| job wall s, plain | job wall s, watched |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['attach']:.3f} | {row['close rank 0']:.2f} | "
            f"{row['close rank 1']:.2f} | {row['plain job wall']:.1f} | "
            f"{row['watched job wall']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        _write(Path(args.write), table, args, load_before, load_after, torch.__version__)


def _write(path: Path, table: str, args: argparse.Namespace, before, after, version) -> None:  # noqa: ANN001
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = f"""# traindoctor on a 2-rank DDP job: overhead

`python bench/ddp_overhead.py --steps {args.steps} --rounds {args.rounds}` (torchrun --standalone,
2 ranks, gloo, CPU, one thread per rank; torch {version}). Each job trains {args.steps} steps,
plain or with `td.watch(ddp_model, opt, console=False)`; jobs alternate plain/watched,
{args.rounds} rounds each. Step time: rank 0's wall time of zero_grad + forward + backward
(DDP's all-reduce) + optimizer step, and its CPU time (`time.process_time`, the rank's
process, gloo's threads included: less sensitive to the load than the wall, which waits for
the slower rank), the median per phase, then the median over rounds.
Close: `doc.close()` (detach, final rules, the rank's report files with plots, as users get
them, and the job's merge; rank 0 waits for rank 1's files). Job wall: the whole torchrun, start-up and imports included.

Load average before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}; after: {after[0]:.2f} \
{after[1]:.2f} {after[2]:.2f} (`uptime` at the end: {uptime}). The machine has 2 cores shared
with other sessions: the figures are noisy, the ratios more than the absolute times.

{table}
"""
    path.write_text(text)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
