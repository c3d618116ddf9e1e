# CenterNet (Zhou et al. 2019): a fully convolutional net predicts a per-class centre heatmap
# (sigmoid, bias initialised to -2.19 as in the paper) and a box size at each centre; the
# heatmap loss is CornerNet's penalty-reduced focal loss against Gaussian-splatted targets,
# normalised by the number of objects; the size loss is L1 read only at the centres.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
S, C = 24, 2
yy, xx = torch.meshgrid(torch.arange(S).float(), torch.arange(S).float(), indexing="ij")


def scene(n):
    img = 0.1 * torch.randn(n, 1, S, S)
    hm = torch.zeros(n, C, S, S)
    size = torch.zeros(n, 2, S, S)
    mask = torch.zeros(n, S, S)
    for i in range(n):
        for _ in range(torch.randint(1, 4, ()).item()):
            c = torch.randint(0, C, ()).item()
            r = 2 if c == 0 else 4  # class 0 small squares, class 1 large
            cx, cy = torch.randint(r, S - r, (2,)).tolist()
            img[i, 0, cy - r : cy + r, cx - r : cx + r] += 1.0
            g = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (r / 2) ** 2))
            hm[i, c] = torch.maximum(hm[i, c], g)
            size[i, :, cy, cx] = 2 * r
            mask[i, cy, cx] = 1
    return img, hm, size, mask


def focal(pred, gt):
    pos = gt.eq(1).float()
    neg = 1 - pos
    p = pred.clamp(1e-4, 1 - 1e-4)
    pos_loss = (torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - p) * p**2 * (1 - gt) ** 4 * neg).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


class Net(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=2, dilation=2),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=4, dilation=4),
            nn.BatchNorm2d(c),
            nn.ReLU(),
        )
        self.hm = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, C, 1))
        self.wh = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 2, 1))
        nn.init.constant_(self.hm[-1].bias, -2.19)

    def forward(self, x):
        f = self.body(x)
        return self.hm(f).sigmoid(), self.wh(f)


model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
losses = []
for step in range(200):
    img, hm, size, mask = scene(16)
    phm, pwh = model(img)
    l_hm = focal(phm, hm)
    l_wh = (F.l1_loss(pwh, size, reduction="none").sum(1) * mask).sum() / mask.sum()
    loss = l_hm + 0.1 * l_wh
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first10/last10", sum(losses[:10]) / 10, sum(losses[-10:]) / 10)
