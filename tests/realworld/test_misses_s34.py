"""Misses from real reports (session 34), each written in the reporter's style beside its fixed
twin, which must stay silent (no error, no warning); in-process `td.watch`.

TD213, a log-likelihood used as the loss without its minus sign (it falls towards -inf while
the labels are made ever less likely), read on the loss's graph (`score - logsumexp` or a
label's `log_softmax` with a plus sign) and on the measured loss (<= 0 at every step, falling):
- kmkurn/pytorch-crf#81 (https://github.com/kmkurn/pytorch-crf/issues/81; also #27): a
  bi-LSTM + CRF trained on `loss = crf(emissions, tags, mask)` ("a really big negative loss,
  decode outputs my padding value"); the fix `loss = -crf(...)`. pytorch-crf's algorithm.
- PyTorch's BiLSTM-CRF tutorial's `neg_log_likelihood` written the other way round
  (`gold_score - forward_score`, its stable `log_sum_exp` by hand).
- a hand-written NLL that forgot the minus (`log_probs[range(n), y].mean()`).
Silent beside them: the fixed twins, REINFORCE (`-(log_prob * advantage)`), a mixture
density's `-logsumexp`, a log-likelihood with `maximize=True`.

TD302, a loss term computed from a detached tensor while every param still gets a gradient from
the other terms (no TD102), in the shapes the cut tracker did not follow: losses stacked and
summed (`torch.sum(torch.stack(layer_losses))`, leongatys/PytorchNeuralStyleTransfer#16's
form), a per-sample sum of two errors before the mean. Silent: the twins, a straight-through
estimator in the loss code, a DQN target.

TD301, forces from an energy model by `torch.autograd.grad` without `create_graph=True`
(aiqm/torchani#238, "Create graph for force in force training"): the force term trains
nothing; the fix now names `create_graph=True`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td


def _loud(doc) -> dict:
    return {f.code: f for f in doc.report.findings if f.severity.value != "info"}


def _train(tmp_path, model, steps, loss_of, *, lr=1e-2, opt=None) -> dict:
    opt = opt or torch.optim.Adam(model.parameters(), lr=lr)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for step in range(steps):
            loss = loss_of(model, step)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _loud(doc)


# -- kmkurn/pytorch-crf#81: loss = crf(emissions, tags, mask) ---------------------------------
class _CRF(nn.Module):
    """pytorch-crf's CRF (seq-first): forward returns the log-likelihood, summed."""

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.start_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))

    def forward(self, emissions, tags, mask):
        numerator = self._compute_score(emissions, tags, mask)
        denominator = self._compute_normalizer(emissions, mask)
        return (numerator - denominator).sum()

    def _compute_score(self, emissions, tags, mask):
        seq_length, batch_size = tags.shape
        mask = mask.float()
        ar = torch.arange(batch_size)
        score = self.start_transitions[tags[0]] + emissions[0, ar, tags[0]]
        for i in range(1, seq_length):
            score = score + self.transitions[tags[i - 1], tags[i]] * mask[i]
            score = score + emissions[i, ar, tags[i]] * mask[i]
        seq_ends = mask.long().sum(dim=0) - 1
        return score + self.end_transitions[tags[seq_ends, ar]]

    def _compute_normalizer(self, emissions, mask):
        score = self.start_transitions + emissions[0]
        for i in range(1, emissions.size(0)):
            nxt = score.unsqueeze(2) + self.transitions + emissions[i].unsqueeze(1)
            nxt = torch.logsumexp(nxt, dim=1)
            score = torch.where(mask[i].unsqueeze(1), nxt, score)
        return torch.logsumexp(score + self.end_transitions, dim=1)


class _Tagger(nn.Module):
    def __init__(self, vocab: int = 30, tags: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, 16)
        self.lstm = nn.LSTM(16, 8, bidirectional=True)
        self.fc = nn.Linear(16, tags)
        self.crf = _CRF(tags)

    def forward(self, x):
        return self.fc(self.lstm(self.emb(x))[0])


@pytest.mark.parametrize("fixed", [False, True])
def test_pytorch_crf_log_likelihood_as_the_loss(tmp_path, fixed):
    g = torch.Generator().manual_seed(1)
    X = torch.randint(0, 30, (8, 64), generator=g)
    Y, M = X % 3, torch.ones(8, 64, dtype=torch.bool)

    def loss_of(model, step):
        b = (step % 8) * 8
        llh = model.crf(model(X[:, b : b + 8]), Y[:, b : b + 8], M[:, b : b + 8])
        return -llh if fixed else llh

    loud = _train(tmp_path, _Tagger(), 30, loss_of)
    if fixed:
        assert loud == {}
        return
    assert list(loud) == ["TD213"], loud
    f = loud["TD213"]
    assert f.severity.value == "error" and f.evidence["form"] == "score_minus_logsumexp"
    assert f.evidence["max_loss"] <= 0 and f.evidence["last_median"] < f.evidence["first_median"]
    assert "-crf(" in f.fix


# -- PyTorch's BiLSTM-CRF tutorial, neg_log_likelihood the other way round --------------------
def _log_sum_exp(vec):
    max_score = vec[0, torch.argmax(vec, 1).item()]
    return max_score + torch.log(torch.sum(torch.exp(vec - max_score.view(1, -1).expand(1, -1))))


class _TutorialCRF(nn.Module):
    def __init__(self, vocab: int = 20, tags: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tagset_size = tags + 2  # START, STOP
        self.start, self.stop = tags, tags + 1
        self.word_embeds = nn.Embedding(vocab, 8)
        self.lstm = nn.LSTM(8, 4, bidirectional=True)
        self.hidden2tag = nn.Linear(8, self.tagset_size)
        self.transitions = nn.Parameter(torch.randn(self.tagset_size, self.tagset_size))
        self.transitions.data[self.start, :] = -10000
        self.transitions.data[:, self.stop] = -10000

    def _get_lstm_features(self, sentence):
        embeds = self.word_embeds(sentence).view(len(sentence), 1, -1)
        return self.hidden2tag(self.lstm(embeds)[0].view(len(sentence), -1))

    def _forward_alg(self, feats):
        init_alphas = torch.full((1, self.tagset_size), -10000.0)
        init_alphas[0][self.start] = 0.0
        forward_var = init_alphas
        for feat in feats:
            alphas_t = []
            for next_tag in range(self.tagset_size):
                emit_score = feat[next_tag].view(1, -1).expand(1, self.tagset_size)
                trans_score = self.transitions[next_tag].view(1, -1)
                alphas_t.append(_log_sum_exp(forward_var + trans_score + emit_score).view(1))
            forward_var = torch.cat(alphas_t).view(1, -1)
        return _log_sum_exp(forward_var + self.transitions[self.stop])

    def _score_sentence(self, feats, tags):
        score = torch.zeros(1)
        tags = torch.cat([torch.tensor([self.start], dtype=torch.long), tags])
        for i, feat in enumerate(feats):
            score = score + self.transitions[tags[i + 1], tags[i]] + feat[tags[i + 1]]
        return score + self.transitions[self.stop, tags[-1]]

    def neg_log_likelihood(self, sentence, tags, fixed):
        feats = self._get_lstm_features(sentence)
        forward_score = self._forward_alg(feats)
        gold_score = self._score_sentence(feats, tags)
        return forward_score - gold_score if fixed else gold_score - forward_score


@pytest.mark.slow
@pytest.mark.parametrize("fixed", [False, True])
def test_bilstm_crf_tutorial_score_minus_partition(tmp_path, fixed):
    g = torch.Generator().manual_seed(2)
    sentences = [torch.randint(0, 20, (5,), generator=g) for _ in range(6)]

    def loss_of(model, step):
        s = sentences[step % 6]
        return model.neg_log_likelihood(s, s % 3, fixed)

    model = _TutorialCRF()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-4)
    loud = _train(tmp_path, model, 24, loss_of, opt=opt)
    if fixed:
        assert loud == {}
        return
    assert list(loud) == ["TD213"], loud
    assert loud["TD213"].evidence["form"] == "score_minus_logsumexp"


# -- a hand-written NLL without its minus; REINFORCE, a mixture density, maximize=True --------
def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))


_X = torch.randn(256, 10, generator=torch.Generator().manual_seed(3))
_Y = (_X[:, :2] > 0).long() @ torch.tensor([1, 2])


@pytest.mark.parametrize(
    "variant", ["bug", "log_of_softmax", "fixed", "reinforce", "mixture", "maximize"]
)
def test_hand_written_nll_sign(tmp_path, variant):
    def loss_of(model, step):
        i = slice((step % 8) * 32, (step % 8) * 32 + 32)
        logp = F.log_softmax(model(_X[i]), dim=1)
        picked = logp[torch.arange(32), _Y[i]]
        if variant in ("bug", "maximize"):
            return picked.mean()
        if variant == "log_of_softmax":
            return torch.log(F.softmax(model(_X[i]), dim=1))[torch.arange(32), _Y[i]].mean()
        if variant == "fixed":
            return -picked.mean()
        if variant == "reinforce":
            advantage = (picked.detach().exp() > 0.3).float() - 0.5
            return -(picked * advantage).mean()
        return -torch.logsumexp(logp - 1.0, dim=1).mean() + 0.01 * model[0].weight.pow(2).sum()

    model = _classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, maximize=variant == "maximize")
    loud = _train(tmp_path, model, 30, loss_of, opt=opt)
    if variant not in ("bug", "log_of_softmax"):
        assert "TD213" not in loud and "TD302" not in loud, loud
        if variant in ("fixed", "maximize"):
            assert loud == {}
        return
    assert list(loud) == ["TD213"], loud
    assert loud["TD213"].evidence["form"] == "log_softmax"
    assert loud["TD213"].where.op == "log_softmax"


# -- TD302: a detached term stacked or summed per sample, every param still trained -----------
class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        out = self.head(self.body(x))
        return out, out[:, :1] * 2  # the auxiliary output reads the same head


_R = _X[:, 2:3] * 2


@pytest.mark.parametrize(
    "shape", ["stack", "stack_fixed", "per_sample", "per_sample_fixed", "ste", "dqn"]
)
def test_detached_term_stacked_or_per_sample(tmp_path, shape):
    def loss_of(model, step):
        i = slice((step % 8) * 32, (step % 8) * 32 + 32)
        out, aux = model(_X[i])
        y, r = _Y[i], _R[i]
        if shape.startswith("stack"):
            a = aux if shape.endswith("fixed") else aux.detach()
            layer_losses = [F.cross_entropy(out, y), F.mse_loss(a, r)]
            return torch.sum(torch.stack(layer_losses))
        if shape.startswith("per_sample"):
            a = aux if shape.endswith("fixed") else aux.detach()
            ce = F.cross_entropy(out, y, reduction="none")
            return (ce + (a - r).pow(2).squeeze(1)).mean()
        if shape == "ste":
            soft = out.softmax(1)
            hard = F.one_hot(soft.argmax(1), 4).float()
            st = soft + (hard - soft).detach()  # straight-through: value hard, gradient soft
            return F.cross_entropy(out, y) + (st * torch.linspace(0, 1, 4)).sum(1).mean()
        target = r.squeeze(1) + 0.9 * out.max(1).values.detach()
        return (aux.squeeze(1) - target).pow(2).mean() + F.cross_entropy(out, y)

    loud = _train(tmp_path, _TwoHeads(), 12, loss_of)
    if shape in ("stack", "per_sample"):
        assert list(loud) == ["TD302"], loud
        f = loud["TD302"]
        assert f.severity.value == "error" and f.evidence["cut"] == "detach"
        assert f.evidence["added_at"] and f.evidence["cut_at"]
        return
    assert loud == {}, loud


# -- aiqm/torchani#238: forces by autograd.grad without create_graph ---------------------------
class _Energy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mlp = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, coordinates):
        return self.mlp(coordinates).sum(dim=(1, 2))  # (molecules, atoms, 3) -> energies


@pytest.mark.parametrize("create_graph", [False, True])
def test_forces_without_create_graph(tmp_path, create_graph):
    g = torch.Generator().manual_seed(4)

    def loss_of(model, step):
        coordinates = torch.randn(8, 5, 3, generator=g).requires_grad_(True)
        true_energies = 0.5 * coordinates.detach().pow(2).sum(dim=(1, 2))
        true_forces = -coordinates.detach()
        predicted_energies = model(coordinates)
        forces = -torch.autograd.grad(
            predicted_energies.sum(), coordinates, create_graph=create_graph, retain_graph=True
        )[0]
        energy_loss = (predicted_energies - true_energies).pow(2).mean()
        force_loss = (true_forces - forces).pow(2).sum(dim=(1, 2)).mean()
        return energy_loss + 0.1 * force_loss

    loud = _train(tmp_path, _Energy(), 6, loss_of)
    if create_graph:
        assert loud == {}
        return
    assert list(loud) == ["TD301"], loud
    f = loud["TD301"]
    assert f.evidence["op"] == "grad" and "create_graph=True" in f.fix
    assert "create_graph=True" in f.cause


# -- functorch's Lennard-Jones example, network derivatives detached (ecosystem mutant) -------
@pytest.mark.parametrize("detached", [True, False])
def test_force_term_reaches_only_the_inputs(tmp_path, detached):
    from torch.func import jacrev, vmap

    sigma, epsilon = 0.5, 4.0
    r = torch.linspace(0.5, 2 * sigma, steps=64, requires_grad=True)  # as the example's
    drs = torch.outer(r, torch.tensor([1.0, 0, 0]))
    norms = torch.norm(drs, dim=1).reshape(-1, 1)
    training_energies = epsilon * ((sigma / norms) ** 12 - (sigma / norms) ** 6)
    magnitude = -epsilon * ((-12 * sigma**12 / norms**13) + (6 * sigma**6 / norms**7))
    training_forces = magnitude * drs
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss_of(model, step):
        n = torch.norm(drs, dim=1).reshape(-1, 1)
        energies = model(n)
        network_derivs = vmap(jacrev(model))(n).squeeze(-1)
        if detached:
            network_derivs = network_derivs.detach()
        forces = -network_derivs * drs / n
        return (
            F.mse_loss(training_energies, energies) + 0.01 * F.mse_loss(training_forces, forces) / 3
        )

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for step in range(6):
            opt.zero_grad()
            loss_of(model, step).backward(retain_graph=True)
            opt.step()
    loud = _loud(doc)
    if not detached:
        assert loud == {}
        return
    assert list(loud) == ["TD302"], loud
    f = loud["TD302"]
    assert f.severity.value == "warning" and f.evidence["terms"][0]["op"] == "mse_loss"
    assert "reaches no trained parameter" in f.title
