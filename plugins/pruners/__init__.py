"""Pruner plugins (one file per criterion): importance criteria on torch-pruning, and unstructured L1."""
