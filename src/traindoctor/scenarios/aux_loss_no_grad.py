"""TD302: a z-loss regularizer computed under torch.no_grad(), logged as a loss part."""

from ._base import Scenario
from ._cuts import line_of, train_no_grad


def train(steps: int = 40, watch=None):
    return train_no_grad(steps=steps, watch=watch, bug=True)


SCENARIO = Scenario(
    name="aux_loss_no_grad",
    bug="the z-loss regularizer is computed under torch.no_grad(): it is in the loss (and "
    "logged as part 'z') but trains nothing",
    train=train,
    expect=("TD302",),
    top="TD302",
    where={"source": line_of("loss = ce + kd + z")},
    twin="aux_loss_with_grad",
    steps=40,
)

if __name__ == "__main__":
    train()
