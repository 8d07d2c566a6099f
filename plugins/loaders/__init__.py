"""First-party loaders of streaming datasets: PIL in worker processes, batched device decode, NVIDIA DALI."""
