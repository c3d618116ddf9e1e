"""Scenarios of the loss-path rules (TD3xx): a buggy/healthy pair per module, named by code."""
