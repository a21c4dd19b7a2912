"""The thin Dagster layer: assets, resources, partitions, checks and definitions."""
