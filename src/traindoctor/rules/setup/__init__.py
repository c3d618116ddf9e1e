"""Setup rules (TD5xx): what trains, parameters that cannot, data and schedule setup."""
