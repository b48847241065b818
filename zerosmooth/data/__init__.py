"""Data for ZeroSmooth's own experiments: a procedural video world (``world``) and the shipped
tiny model trained on it (``tiny_world_svd/``, see ``zerosmooth.embedded``)."""

from zerosmooth.data.world import RENDER_FPS, Clip, WorldConfig, render_clip, training_clip

__all__ = ["RENDER_FPS", "Clip", "WorldConfig", "render_clip", "training_clip"]
