"""Distributed rules (TD6xx): what only shows across the ranks of a torchrun/DDP job.

Most read the job timeline (distributed/job_timeline.py: each rank's values side by side,
`job.*` signals), which only the merge of a job's ranks builds; on a single run's timeline they
have nothing to read. TD605 judges one rank's own timeline (its DistributedSampler)."""
