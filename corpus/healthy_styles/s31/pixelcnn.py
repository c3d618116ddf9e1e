# PixelCNN (van den Oord et al. 2016): convolutions whose weights are masked (type A on the first
# layer, excluding the centre pixel; type B after) by a registered buffer multiplied in before
# each conv, residual blocks, per-pixel Bernoulli likelihood on binary 8x8 images of random
# rectangles. Learns: test NLL (bits/pixel) falls well below the 1 bit of a coin.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
S = 8


def rects(n):
    img = torch.zeros(n, 1, S, S)
    for i in range(n):
        x0, y0 = torch.randint(0, S - 3, (2,)).tolist()
        w, h = torch.randint(2, S - max(x0, y0) + 1, (2,)).tolist()
        img[i, 0, y0 : y0 + h, x0 : x0 + w] = 1
    return img


class MaskedConv2d(nn.Conv2d):
    def __init__(self, kind, *a, **k):
        super().__init__(*a, **k)
        kh, kw = self.kernel_size
        mask = torch.ones_like(self.weight)
        mask[:, :, kh // 2, kw // 2 + (kind == "B") :] = 0
        mask[:, :, kh // 2 + 1 :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.inp = MaskedConv2d("A", 1, c, 7, padding=3)
        self.res = nn.ModuleList([MaskedConv2d("B", c, c, 3, padding=1) for _ in range(4)])
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, 1, 1))

    def forward(self, x):
        h = self.inp(x)
        for r in self.res:
            h = h + r(F.relu(h))
        return self.out(h)


train, test = rects(2000), rects(500)
model = PixelCNN()
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
for epoch in range(6):
    for i in range(0, len(train), 64):
        x = train[i : i + 64]
        loss = F.binary_cross_entropy_with_logits(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        bits = F.binary_cross_entropy_with_logits(model(test), test).item() / 0.6931
    print("epoch", epoch, "test bits/pixel", round(bits, 4))
