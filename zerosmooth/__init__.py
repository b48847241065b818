"""ZeroSmooth: training-free high-frame-rate video generation for diffusers video pipelines.

    from zerosmooth import ZeroSmooth, ZeroSmoothConfig
    out = ZeroSmooth(pipe, ZeroSmoothConfig(scale=2, stages=2))(image=image, num_frames=14)
    out.frames      # the 28-frame video; out.stages[0] is the 14-frame base video

The names are imported on first use: ``import zerosmooth`` (and so the command line's ``--help``)
does not pay for diffusers, transformers or triton.
"""

import importlib
from typing import TYPE_CHECKING

__all__ = ["ZeroSmooth", "ZeroSmoothConfig", "ZeroSmoothOutput"]

_HOMES = {"ZeroSmooth": "api", "ZeroSmoothOutput": "api", "ZeroSmoothConfig": "config"}

if TYPE_CHECKING:
    from .api import ZeroSmooth, ZeroSmoothOutput
    from .config import ZeroSmoothConfig


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted({*globals(), *__all__})
