"""Evaluation hygiene rules (TD4xx): modes, validation, contamination, metrics."""
