"""Transitional: seed 003's program moved to seeds/seed003.py; kept only while flat modules
still import it (delete with the last of them)."""

from .seeds.seed003 import line_of, train

__all__ = ["line_of", "train"]
