"""SLURM execution through submitit: resources, submission in job arrays, a durable run ledger, status,
resubmission, cancellation, preemption-safe resumption and stage dependencies."""
