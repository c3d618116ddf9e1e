"""Scenarios of the setup rules (TD5xx): a buggy/healthy pair per module, named by code."""
