"""V-JEPA2-style world model: Stage-1 masked-latent encoder, Stage-2 action-conditioned transformer."""

from worldmodel.masked_prediction import load_encoder
from worldmodel.world_model import WorldModel, load_world_model

__all__ = ["load_encoder", "load_world_model", "WorldModel"]
