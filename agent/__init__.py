"""Actor-critic trained in imagination on the world model."""
