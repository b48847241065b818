"""ZeroSmooth: training-free high-frame-rate video generation for diffusers video pipelines.

    from zerosmooth import ZeroSmooth, ZeroSmoothConfig
    out = ZeroSmooth(pipe, ZeroSmoothConfig(scale=2, stages=2))(image=image, num_frames=14)
    out.frames      # the 28-frame video; out.stages[0] is the 14-frame base video
"""

from .api import ZeroSmooth, ZeroSmoothOutput
from .config import ZeroSmoothConfig

__all__ = ["ZeroSmooth", "ZeroSmoothConfig", "ZeroSmoothOutput"]
