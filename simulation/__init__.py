"""Synthetic storefront traffic for tests, demos and benchmarks."""
