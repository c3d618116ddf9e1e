"""TD1xx: gradient flow, "the model is not learning"."""
