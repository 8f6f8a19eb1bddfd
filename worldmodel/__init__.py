"""V-JEPA2-style world model: Stage-1 masked-latent encoder, Stage-2 action-conditioned transformer."""

from worldmodel.masked_prediction import load_encoder
from worldmodel.protocol import LatentWorldModel, PolicyWorldModel
from worldmodel.world_model import WorldModel, load_world_model

__all__ = ["LatentWorldModel", "PolicyWorldModel", "WorldModel", "load_encoder", "load_world_model"]
