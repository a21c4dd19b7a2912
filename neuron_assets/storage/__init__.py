"""Pandera table models, Parquet partitions and DuckDB views."""
