# DETR-style set prediction (Carion et al. 2020): learned object queries attend to image
# features through a transformer decoder; each query predicts a class (or "no object") and a
# box centre/size; the loss matches queries to targets with the Hungarian algorithm
# (scipy linear_sum_assignment on a no-grad cost), then CE (eos weight 0.1) + L1 on matched boxes.
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

torch.manual_seed(0)
S, C, NQ = 16, 3, 6


def scene(n):
    imgs = torch.zeros(n, C, S, S)
    targets = []
    for i in range(n):
        k = torch.randint(1, 4, ()).item()
        labels, boxes = [], []
        for _ in range(k):
            c = torch.randint(0, C, ()).item()
            w, h = torch.randint(3, 7, (2,)).tolist()
            x0, y0 = torch.randint(0, S - w, ()).item(), torch.randint(0, S - h, ()).item()
            imgs[i, c, y0 : y0 + h, x0 : x0 + w] = 1
            labels.append(c)
            boxes.append([(x0 + w / 2) / S, (y0 + h / 2) / S, w / S, h / S])
        targets.append((torch.tensor(labels), torch.tensor(boxes)))
    return imgs + 0.1 * torch.randn_like(imgs), targets


class DETR(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(C, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, d, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pos = nn.Parameter(torch.randn(1, (S // 2) ** 2, d) * 0.02)
        self.query = nn.Embedding(NQ, d)
        layer = nn.TransformerDecoderLayer(d, 4, 128, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, 2)
        self.cls = nn.Linear(d, C + 1)
        self.box = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))

    def forward(self, x):
        mem = self.backbone(x).flatten(2).transpose(1, 2) + self.pos
        h = self.decoder(self.query.weight.expand(len(x), -1, -1), mem)
        return self.cls(h), self.box(h).sigmoid()


def set_loss(logits, boxes, targets):
    weight = torch.ones(C + 1)
    weight[C] = 0.1
    tgt_cls = torch.full(logits.shape[:2], C)
    l1, nbox = 0.0, 0
    for i, (lab, bx) in enumerate(targets):
        with torch.no_grad():
            cost = -logits[i].softmax(-1)[:, lab] + 5 * torch.cdist(boxes[i], bx, p=1)
        qi, ti = linear_sum_assignment(cost.numpy())
        qi, ti = torch.as_tensor(qi), torch.as_tensor(ti)
        tgt_cls[i, qi] = lab[ti]
        l1 = l1 + F.l1_loss(boxes[i, qi], bx[ti], reduction="sum")
        nbox += len(ti)
    return F.cross_entropy(logits.flatten(0, 1), tgt_cls.flatten(), weight) + 5 * l1 / nbox


model = DETR()
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-4)
losses = []
for step in range(250):
    x, t = scene(32)
    loss = set_loss(*model(x), t)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    opt.step()
    losses.append(loss.item())
print("loss first10/last10", sum(losses[:10]) / 10, sum(losses[-10:]) / 10)
