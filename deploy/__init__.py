"""The composition root: CLI, local and Ray wiring, deployment files. Nothing imports it."""
