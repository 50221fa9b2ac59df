"""Shared test helpers: generators of real test data (products, scenes, labels, shards, checkpoints), reference
implementations, the tiny demo workflow runs and the throw-away Slurm cluster. Test modules import these, never
each other."""
