"""The single install/remove path of everything ZeroSmooth attaches to a UNet, through diffusers'
``HookRegistry`` (``diffusers.hooks``): attention hooks, position hooks, residual-stream hooks and
diagnostic probes are all :class:`ZeroSmoothHook` subclasses registered under :data:`HOOK_NAME`.

Hooks never hold call state themselves: they read the :class:`SessionSlot` of the wrapper that
installed them, whose ``session`` is None outside a ZeroSmooth call — then every hook passes its
module through unchanged, so an installed wrapper leaves direct pipeline calls as they were.
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .state import Session

HOOK_NAME = "zerosmooth"


class SessionSlot:
    """Where a wrapper's hooks find the call in progress (``session`` is None between calls)."""

    def __init__(self):
        self.session: Optional[Session] = None


class ZeroSmoothHook(ModelHook):
    """Base of every ZeroSmooth hook: knows the slot of the wrapper that installed it."""

    def __init__(self, slot: SessionSlot):
        super().__init__()
        self.slot = slot


def installed(module: torch.nn.Module) -> bool:
    """Whether a ZeroSmooth hook is registered on ``module``."""
    return HookRegistry.check_if_exists_or_initialize(module).get_hook(HOOK_NAME) is not None


def install(pairs: list[tuple[torch.nn.Module, ZeroSmoothHook]]) -> list[torch.nn.Module]:
    """Register each hook on its module; returns the modules, for :func:`remove`.

    Raises:
        RuntimeError: a module already carries a ZeroSmooth hook (another wrapper is enabled);
            nothing is installed then.
    """
    taken = [module for module, _ in pairs if installed(module)]
    if taken:
        raise RuntimeError("another ZeroSmooth wrapper is enabled on this pipeline; disable it first")
    for module, hook in pairs:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)
    return [module for module, _ in pairs]


def remove(modules: list[torch.nn.Module]) -> None:
    """Unregister the ZeroSmooth hook of every module (the modules' forwards are as before)."""
    for module in modules:
        HookRegistry.check_if_exists_or_initialize(module).remove_hook(HOOK_NAME, recurse=False)
