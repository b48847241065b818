"""Model-family adapters; :func:`adapter_for` picks the one for a pipeline."""

from __future__ import annotations

from .animatediff import AnimateDiffAdapter
from .base import Adapter, Call, Stage
from .svd import SVDAdapter
from .unet3d import UNet3DAdapter

ADAPTERS: tuple[type[Adapter], ...] = (SVDAdapter, AnimateDiffAdapter, UNet3DAdapter)


def supported_pipelines() -> list[str]:
    return [name for adapter in ADAPTERS for name in adapter.pipeline_class_names]


def adapter_for(pipe) -> Adapter:
    """The adapter for ``pipe``.

    Raises:
        TypeError: naming the supported pipeline classes when ``pipe`` is none of them.
    """
    for adapter in ADAPTERS:
        if adapter.supports(pipe):
            return adapter(pipe)
    raise TypeError(
        f"ZeroSmooth supports the diffusers pipelines {', '.join(supported_pipelines())}; "
        f"got {type(pipe).__name__}"
    )


__all__ = ["ADAPTERS", "Adapter", "AnimateDiffAdapter", "Call", "SVDAdapter", "Stage", "UNet3DAdapter", "adapter_for"]
