"""First-party executors: local worker processes (one per GPU), Slurm through submitit, Ray."""
