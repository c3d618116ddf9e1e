"""TD7xx scenarios: each experiment on a copy (issue 17) where it confirms a real cause, and
where it refutes a plausible wrong one. In the single-process runner's FAMILIES, run with the
experiments on (`Scenario.experiments`, as `traindoctor check` runs them) and judged among the
TD7xx findings (demo.verdict_finding); their per-experiment verdicts are asserted by
tests/experiments/test_recipe_scenarios.py."""
