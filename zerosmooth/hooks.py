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


def installed(module: torch.nn.Module, name: str = HOOK_NAME) -> bool:
    """Whether a ZeroSmooth hook (of ``name``) is registered on ``module``."""
    return HookRegistry.check_if_exists_or_initialize(module).get_hook(name) is not None


def install(pairs: list[tuple[torch.nn.Module, ZeroSmoothHook]], name: str = HOOK_NAME) -> list[torch.nn.Module]:
    """Register each hook on its module under ``name``; returns the modules, for :func:`remove`.

    A hook registered later wraps those registered before it on the same module, so it sees their
    outputs (the diagnostic probes rely on this).

    Raises:
        RuntimeError: a module already carries a hook of that name (another wrapper is enabled);
            nothing is installed then.
    """
    if any(installed(module, name) for module, _ in pairs):
        raise RuntimeError("another ZeroSmooth wrapper is enabled on this pipeline; disable it first")
    for module, hook in pairs:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    return [module for module, _ in pairs]


def remove(modules: list[torch.nn.Module], name: str = HOOK_NAME) -> None:
    """Unregister the hook of ``name`` from every module (the modules' forwards are as before)."""
    for module in modules:
        HookRegistry.check_if_exists_or_initialize(module).remove_hook(name, recurse=False)
