"""Scenarios of the evaluation-hygiene rules (TD4xx): a buggy/healthy pair per module, named by code."""
