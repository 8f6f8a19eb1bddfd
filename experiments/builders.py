"""Modules built from the experiment config: the one place that reads the config tree to build them.

Each component is built from its own typed config (``MaskedViT.from_config``, ...); these functions
only pick the sections and the sizes that come from elsewhere in the tree (the image size and frame
stack from ``environment``, the latent size and patch size from ``models``, the context window from
``vjepa2_world_model.stage2.sequence_length``).
"""

from __future__ import annotations

from experiments.config import Config
from worldmodel.dynamics_loss import WorldModelLoss
from worldmodel.encoder import MaskedViT
from worldmodel.masked_prediction import MaskedPredictionModel
from worldmodel.transformer import WorldModelTransformer


def build_encoder(cfg: Config) -> MaskedViT:
    """The Stage-1 encoder of ``models.encoder`` over the frames of ``environment``."""
    m, e = cfg.models, cfg.environment
    return MaskedViT.from_config(m.encoder.params.vit, image_size=e.image_height, in_channels=e.frame_stack_size,
                                 patch_size=m.shared_patch_size, dim=m.shared_latent_dim)


def build_stage1_model(cfg: Config) -> MaskedPredictionModel:
    """A new encoder (:func:`build_encoder`) with the Stage-1 objective and predictor of the config."""
    return MaskedPredictionModel.from_config(build_encoder(cfg), cfg.vjepa2_world_model.stage1, cfg.models.predictor)


def build_world_model_transformer(cfg: Config, num_actions: int = 4) -> WorldModelTransformer:
    """The Stage-2 network of ``models.world_model`` with the Stage-2 sequence length as its context window."""
    return WorldModelTransformer.from_config(cfg.models.world_model, latent_dim=cfg.models.shared_latent_dim,
                                             num_actions=num_actions,
                                             max_len=cfg.vjepa2_world_model.stage2.sequence_length)


def build_world_model_loss(cfg: Config) -> WorldModelLoss:
    """The Stage-2 loss of ``vjepa2_world_model.stage2``."""
    return WorldModelLoss.from_config(cfg.vjepa2_world_model.stage2)
