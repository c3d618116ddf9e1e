"""Small replicas of real seed reports (shared/seeds/): one module per report, its variants by `bug`."""
