# Seq2seq GRU with Bahdanau attention and scheduled teacher forcing: reverse a digit sequence.
import random
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
random.seed(0)
V, SOS, H = 12, 11, 64  # tokens 1..10 digits, 0 = pad (unused), 11 = SOS


class Enc(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.gru = nn.GRU(32, H, batch_first=True)

    def forward(self, x):
        return self.gru(self.emb(x))


class Dec(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.Wa = nn.Linear(H, H)
        self.Ua = nn.Linear(H, H)
        self.va = nn.Linear(H, 1)
        self.gru = nn.GRU(32 + H, H, batch_first=True)
        self.out = nn.Linear(H, V)

    def forward(self, tok, h, enc_out):
        score = self.va(torch.tanh(self.Wa(h.transpose(0, 1)) + self.Ua(enc_out)))  # B,S,1
        w = F.softmax(score, dim=1)
        ctx = (w * enc_out).sum(1, keepdim=True)
        o, h = self.gru(torch.cat([self.emb(tok), ctx], 2), h)
        return self.out(o.squeeze(1)), h


enc, dec = Enc(), Dec()
eopt = torch.optim.Adam(enc.parameters(), lr=2e-3)
dopt = torch.optim.Adam(dec.parameters(), lr=2e-3)
L = 6
losses = []
for step in range(300):
    src = torch.randint(1, 11, (32, L))
    tgt = src.flip(1)
    enc_out, h = enc(src)
    tok = torch.full((32, 1), SOS)
    tf = random.random() < max(0.0, 1 - step / 200)
    loss = 0
    for t in range(L):
        logits, h = dec(tok, h, enc_out)
        loss = loss + F.cross_entropy(logits, tgt[:, t])
        tok = tgt[:, t : t + 1] if tf else logits.argmax(1, keepdim=True).detach()
    loss = loss / L
    eopt.zero_grad()
    dopt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(list(enc.parameters()) + list(dec.parameters()), 1.0)
    eopt.step()
    dopt.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)
