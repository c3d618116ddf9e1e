"""TD2xx: numerics and mixed precision (seed 003)."""
