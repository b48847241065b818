"""The residual-stream correction (docs/SPEC.md §10, an extension beyond the paper; on by default).

On a measured UNet, key-frame drift is made afresh in every pass by the layers that mix frames
(temporal convolutions, temporal attention over windows holding in-between frames) and travels in
the residual stream, which the paper's attention correction never touches. This correction acts on
the stream itself: at each site (a module's output, logical ``[B, t, …]`` with the frames in the
batch dimension) the long branch's output ``h`` moves towards the same module's output ``h₀`` in the
previous stage at the same step,

    ĥ = h + A⁺(h₀ − A h),  A = sample        (the key-frame rows take h₀, the others stay)
    h ← h + w_r (ĥ − h)                       (w_r: the step's residual strength)

so only the key-frame rows change: ``h[n·i] ← lerp(h[n·i], h₀[i], w_r)``. With
``residual_spread="linear"`` the correction ``d = w_r (h₀ − A h)`` reaches the in-between frames
through another right inverse of ``A`` (:func:`zs_kernels.frames.key_spread`): frame ``n·i + r``
moves by ``(1 − r/n) d_i + (r/n) d_{i+1}``, so it moves with the key frames around it instead of
being left behind by them. A stage that a later stage reads records its output after its own
correction (stage ≥ 3 uses corrected states).
"""

from __future__ import annotations

import torch

from .hooks import ZeroSmoothHook

CACHE_PREFIX = "residual:"


def correct_key_frames(frames: torch.Tensor, key: torch.Tensor, scale: int, strength: float, spread: str,
                       frame_dim: int = 1) -> torch.Tensor:
    """A corrected copy of a long branch's tensor: ``frames + strength · P (key − A frames)``, with
    ``A = sample`` and ``P`` the right inverse ``key_spread(spread)`` (module docstring).

    frames: ``n·t0`` frames along ``frame_dim``; key: the previous stage's, ``t0`` frames there;
    returns a new tensor of ``frames``' shape.
    """
    if frame_dim != 1:
        moved = correct_key_frames(frames.movedim(frame_dim, 1), key.movedim(frame_dim, 1), scale, strength, spread)
        return moved.movedim(1, frame_dim)
    # A copy, not the module's output itself, which may alias a tensor its caller still holds.
    frames = frames.clone()
    if spread == "linear":
        change = (key - frames[:, ::scale]).mul_(strength)
        following = torch.cat([change[:, 1:], change[:, -1:]], dim=1)  # the last key frame holds
        for offset in range(1, scale):
            frames[:, offset::scale] += torch.lerp(change, following, offset / scale)
    # The key rows by lerp under either spread: bit-identical, and exactly h₀ at strength 1.
    frames[:, ::scale].lerp_(key, strength)
    return frames


def key_drift(latents: torch.Tensor, previous: torch.Tensor, scale: int, frame_dim: int = 1) -> float:
    """``‖A x − x₀‖ / ‖x₀‖``: the relative distance of the key frames of ``latents`` (``n·t0``
    frames along ``frame_dim``) from ``previous`` (the previous stage's ``t0`` frames there)."""
    keys = latents.movedim(frame_dim, 0)[::scale].double()
    reference = previous.movedim(frame_dim, 0).double()
    return float((keys - reference).norm() / reference.norm())


class ResidualHook(ZeroSmoothHook):
    """``post_forward`` on one site module: records its output for the next stage and corrects the
    key-frame rows of a long branch's output towards the previous stage's (module docstring)."""

    def __init__(self, slot, name: str):
        super().__init__(slot)
        self.name = name

    def post_forward(self, module, output):
        session = self.slot.session
        step = None if session is None else session.step
        if step is None or step.residual == 0 or not (step.corrected or step.record):
            return output
        wrapped = isinstance(output, tuple)  # transformer blocks called with return_dict=False
        hidden = output[0] if wrapped else output
        frames = hidden.unflatten(0, (step.unet_batch, step.num_frames))
        if step.corrected:
            key = session.cache.take(step, CACHE_PREFIX + self.name)
            config = session.config
            frames = correct_key_frames(frames, key, config.scale, step.residual, config.residual_spread)
            hidden = frames.flatten(0, 1)
        if step.record:
            session.cache.put(step, CACHE_PREFIX + self.name, frames)
        return (hidden, *output[1:]) if wrapped else hidden
