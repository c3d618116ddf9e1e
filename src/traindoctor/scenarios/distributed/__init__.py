"""Scenarios of the distributed rules (TD6xx): 2-rank torchrun jobs (gloo, CPU), a buggy/healthy
pair per module, named by code. Each module's `train(steps, watch, bug)` runs in every rank of
the job; `python -m traindoctor.scenarios.distributed.<module> --scenario NAME [--watch OUT]`
runs one scenario's rank (under torchrun), and `_job.run_job` launches the whole job. They are
not in the single-process runner (scenarios.all_scenarios): scenarios.job_scenarios() lists them.
"""
