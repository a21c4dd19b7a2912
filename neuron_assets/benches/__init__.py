"""Benchmarks behind the make bench targets; each prints the CPU model it ran on."""
