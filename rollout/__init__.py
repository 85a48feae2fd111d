"""Rollout workers: the CARLA env, the fake CARLA, CPU policy inference, the env loop."""
