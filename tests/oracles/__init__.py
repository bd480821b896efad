"""Straightforward, independent computations the package is checked against: the original
DSKDv2 criterion, the paper's ETA, one-sample alignment. The benchmarks time the package
against the same ones, so each oracle has one copy, owned by the tests."""
