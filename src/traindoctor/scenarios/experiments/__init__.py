"""TD7xx scenarios: each experiment on a copy (issue 17) where it confirms a real cause, and
where it refutes a plausible wrong one. Run with the experiments on (`traindoctor check`,
TRAINDOCTOR_EXPERIMENTS=1) by tests/experiments/test_recipe_scenarios.py; not yet in the
single-process runner's FAMILIES (its runs do not enable the experiments)."""
