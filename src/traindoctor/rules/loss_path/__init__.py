"""TD3xx: the gradient path inside the loss: where the gradient of the loss is lost."""
