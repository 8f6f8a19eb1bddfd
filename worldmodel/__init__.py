"""V-JEPA2-style world model: Stage-1 masked-latent encoder, Stage-2 action-conditioned transformer."""
