"""Learning experiments: does the system learn to drive, and how soon (docs/learning.md,
docs/default_run.md). Each module is an entry point that runs the real system through deploy/;
the performance benchmarks are in bench/."""
