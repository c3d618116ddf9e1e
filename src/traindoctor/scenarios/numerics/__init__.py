"""Scenarios of the numerics rules (TD2xx): a buggy/healthy pair per module, named by code."""
