"""Benchmarks: `civis-vault bench …` prints JSON; docs/BENCHMARKS.md records ratios."""
