"""CyclesProbe and TD106 on loops where an optimizer steps off the sampled steps.

TD3 (cleanrl) steps its critic every step and its actor every 2nd step, after the critic's
step: the sampled steps 10, 20, ... never hold an actor step. An actor optimizer never zeroed
was missed; the probe now watches one whole cycle of an optimizer that did not step within a
sampled step. Healthy loops with two optimizers (TD3, a GAN stepping its generator every 2nd
step, an actor-critic) and gradient accumulation stay silent, and the weights are bit-identical
with and without traindoctor.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tests._loop import assert_bit_identical, params_of, watch


def _td3(steps: int, *, zero_actor: bool, doc_dir=None, every: int = 2):
    """Critic stepped every step, actor every `every`-th step after it (TD3's order): the
    actor loss backpropagates through the critic, whose grads the critic's zero_grad clears."""
    torch.manual_seed(0)
    actor = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    critic = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    q_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    a_opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    doc = watch({"actor": actor, "critic": critic}, [q_opt, a_opt], doc_dir) if doc_dir else None
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        obs = torch.randn(32, 3, generator=g)
        act = torch.randn(32, 1, generator=g)
        target = torch.randn(32, 1, generator=g)
        q_loss = F.mse_loss(critic(torch.cat([obs, act], 1)), target)
        q_opt.zero_grad()
        q_loss.backward()
        q_opt.step()
        if step % every == 1:  # as TD3 from learning_starts: after an odd number of steps
            actor_loss = -critic(torch.cat([obs, actor(obs)], 1)).mean()
            if zero_actor:
                a_opt.zero_grad()
            actor_loss.backward()
            a_opt.step()
    if doc is not None:
        doc.close()
    return doc, params_of(actor) + params_of(critic)


def _codes(doc, loud=True):
    return [
        f.code for f in doc.report.findings if not loud or f.severity.value in ("error", "warning")
    ]


def test_an_actor_never_zeroed_is_caught_off_the_sampled_steps(tmp_path):
    doc, _ = _td3(60, zero_actor=False, doc_dir=tmp_path)
    f = next(f for f in doc.report.findings if f.code == "TD106")
    assert f.severity.value == "error"
    assert set(f.where.params) == {
        "actor.0.weight",
        "actor.0.bias",
        "actor.2.weight",
        "actor.2.bias",
    }
    # the actor's step() line, not the critic's
    assert f.where.source.endswith(f"test_cycles.py:{_line('a_opt.step()')}")
    # the sampled steps held no actor step after step 3: the cycles did
    stepped = dict(doc.timeline.series("grads.stepped"))
    assert not any("actor.0.weight" in stepped[s] for s in stepped if s > 3)
    assert doc.timeline.series("grads.cycle_carried")


def test_a_zeroed_actor_is_silent_and_measured(tmp_path):
    doc, _ = _td3(60, zero_actor=True, doc_dir=tmp_path)
    assert "TD106" not in _codes(doc, loud=False)
    cycles = doc.timeline.series("grads.cycle_carried")
    assert cycles and all(v == 0.0 for _, rec in cycles for v in rec.values())
    first = [(e["step"], e["optimizer"]) for e in doc.timeline.events("optimizer_first_step")]
    assert first == [(1, 0), (3, 1)]


def test_an_optimizer_stepped_every_third_step_is_judged_too(tmp_path):
    doc, _ = _td3(90, zero_actor=False, doc_dir=tmp_path, every=3)
    assert "TD106" in _codes(doc)
    doc, _ = _td3(90, zero_actor=True, doc_dir=tmp_path / "ok", every=3)
    assert "TD106" not in _codes(doc, loud=False)


def test_weights_are_bit_identical_with_and_without_the_probe(tmp_path):
    _, plain = _td3(30, zero_actor=False)
    _, watched = _td3(30, zero_actor=False, doc_dir=tmp_path)
    assert_bit_identical(plain, watched)


def test_a_gan_whose_generator_steps_every_second_step_is_silent(tmp_path):
    # D stepped every step, G every 2nd; G's backward writes D's grads, which D's zero_grad
    # clears; each zeroes before its own backward
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    d_opt = torch.optim.Adam(D.parameters(), lr=2e-4)
    g_opt = torch.optim.Adam(G.parameters(), lr=2e-4)
    doc = watch({"G": G, "D": D}, [d_opt, g_opt], tmp_path)
    for step in range(60):
        real = torch.randn(32, 2) + 2
        fake = G(torch.randn(32, 4))
        d_loss = F.binary_cross_entropy_with_logits(
            D(real), torch.ones(32, 1)
        ) + F.binary_cross_entropy_with_logits(D(fake.detach()), torch.zeros(32, 1))
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        if step % 2 == 1:
            g_loss = F.binary_cross_entropy_with_logits(D(fake), torch.ones(32, 1))
            g_opt.zero_grad()
            g_loss.backward()
            g_opt.step()
    doc.close()
    assert "TD106" not in _codes(doc, loud=False)
    assert doc.timeline.series("grads.cycle_carried")


def test_a_head_accumulated_over_two_steps_of_the_body_is_silent(tmp_path):
    # a body and a head with their own optimizers: the head steps every 2nd step over the
    # micro-batches of both, zeroed once per its step; a sampled step sees the head's grads
    # from the step before, which belong to the same cycle of the head
    torch.manual_seed(0)
    body, head = nn.Linear(8, 8), nn.Linear(8, 2)
    b_opt = torch.optim.SGD(body.parameters(), lr=0.05)
    h_opt = torch.optim.SGD(head.parameters(), lr=0.05)
    doc = watch({"body": body, "head": head}, [b_opt, h_opt], tmp_path)
    for step in range(60):
        b_opt.zero_grad()
        for _ in range(3):  # 3 micro-batches per body step
            x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
            (F.cross_entropy(head(body(x)), y) / 3).backward()
        b_opt.step()
        if step % 2 == 1:
            h_opt.step()
            h_opt.zero_grad()
    doc.close()
    assert "TD106" not in _codes(doc, loud=False)


def _line(text: str) -> int:
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip() == text)
