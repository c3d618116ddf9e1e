# 5-fold cross-validation: a fresh model and optimizer per fold, early stopping on the fold's
# validation loss that restores the best weights (deepcopy of the state_dict).
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
N = 1000
X = torch.randn(N, 10)
y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).long()
folds = torch.randperm(N).chunk(5)
scores = []
for k in range(5):
    val = folds[k]
    train = torch.cat([f for j, f in enumerate(folds) if j != k])
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    best, best_state, patience = float("inf"), None, 0
    for epoch in range(40):
        model.train()
        for idx in train[torch.randperm(len(train))].split(64):
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            vl = F.cross_entropy(model(X[val]), y[val]).item()
        if vl < best - 1e-4:
            best, best_state, patience = vl, copy.deepcopy(model.state_dict()), 0
        else:
            patience += 1
            if patience >= 5:
                break
    model.load_state_dict(best_state)
    with torch.no_grad():
        acc = (model(X[val]).argmax(1) == y[val]).float().mean().item()
    scores.append(acc)
    print(f"fold {k}: stopped at epoch {epoch}, best val loss {best:.3f}, acc {acc:.3f}")
print("mean acc", sum(scores) / 5)
