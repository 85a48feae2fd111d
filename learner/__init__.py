"""The TD3 learner: losses, state, the update loop."""
