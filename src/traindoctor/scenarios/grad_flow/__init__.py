"""Scenarios of the gradient-flow rules (TD1xx): a buggy/healthy pair per module, named by code."""
