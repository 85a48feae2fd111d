"""Performance benchmarks: one script per benchmark, JSON out (docs/benchmarks.md). The learning
experiments are in experiments/."""
