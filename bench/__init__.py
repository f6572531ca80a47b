"""Benchmarks of the analysis queries; each run is its own process with its own chdb folder."""
