"""Attention processors of the cascade (SPEC §4–5).

One :class:`ZeroSmoothAttnProcessor` replaces the processor of every ``Attention`` module of the
UNet. What it does depends on the :class:`CascadeState` the cascade sets before each stage's UNet
call:

* outside a ZeroSmooth call it delegates to the module's original processor;
* ``"plain"`` stages (the key branch, baselines) compute exactly what diffusers'
  ``AttnProcessor2_0`` computes, and, when a later stage needs them, record the module's
  projections in the :class:`KeyStateCache`;
* ``"corrected"`` stages back-project their projections onto the previous stage's recorded ones
  (``zs_kernels.corrected_qkv`` for self-attention, ``zs_kernels.back_project`` on Q for
  cross-attention), run both attention passes and blend them ``o + w (ô - o)``; temporal
  self-attention runs both passes over FreeNoise windows in one ``zs_kernels.windowed_attention``
  call. They record their corrected projections for the next stage (SPEC §4, stage ≥ 3).

Layouts: spatial modules see ``[B·t, L, C]`` (viewed ``[B, t, L, C]``), temporal ones ``[B·L, t, C]``
(viewed ``view(B, L, t, C).permute(0, 2, 1, 3)``); recorded states have logical shape
``[B, t, L, 3C]`` (self-attention, ``to_q | to_k | to_v``) or ``[B, t, L, C]`` (cross-attention, Q).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

import zs_kernels

SPATIAL = "spatial"
TEMPORAL = "temporal"


class KeyStateCache:
    """Projections recorded by stage ``s`` for stage ``s + 1`` at the current denoising step.

    Entries are keyed by ``(stage, module name)`` and removed when read, so in the lockstep
    cascade only one step's states are alive. ``peak_bytes`` is the most ever held at once;
    ``recorded_bytes`` the total ever stored (what offloading every step's states would hold).
    """

    def __init__(self):
        self._entries: dict[tuple[int, str], torch.Tensor] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self.recorded_bytes = 0

    @staticmethod
    def _nbytes(tensor: torch.Tensor) -> int:
        return tensor.untyped_storage().nbytes()

    def put(self, stage: int, name: str, tensor: torch.Tensor) -> None:
        key = (stage, name)
        if key in self._entries:
            raise RuntimeError(f"key states of stage {stage} for {name!r} recorded twice in one step")
        self._entries[key] = tensor
        size = self._nbytes(tensor)
        self.current_bytes += size
        self.recorded_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)

    def take(self, stage: int, name: str) -> torch.Tensor:
        try:
            tensor = self._entries.pop((stage, name))
        except KeyError:
            raise RuntimeError(
                f"no key states of stage {stage} for attention module {name!r}: the previous stage did not "
                "run this module at this step"
            ) from None
        self.current_bytes -= self._nbytes(tensor)
        return tensor

    def clear(self) -> None:
        self._entries.clear()
        self.current_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class CascadeState:
    """What the processors need to know about the UNet call in progress.

    ``mode`` is None outside a ZeroSmooth call (processors delegate to the original ones),
    ``"plain"`` for uncorrected stages and ``"corrected"`` for long branches.
    """

    mode: Optional[str] = None
    stage: int = 1
    batch: int = 1
    num_frames: int = 0
    scale: int = 2
    record: bool = False
    weight: float = 0.0
    windowed: bool = False
    window: int = 1
    stride: int = 1
    weighting: str = "pyramid"
    correct_spatial: bool = True
    correct_temporal: bool = True
    correct_cross: bool = True
    kv_kind: str = "box"
    kv_left_probability: float = 0.5
    position_factor: float = 1.0
    backend: str = "auto"
    kv_generator: Optional[torch.Generator] = None
    cache: KeyStateCache = field(default_factory=KeyStateCache)

    def draw_kv_kind(self) -> str:
        """Operator for spatial K/V: ``box_left`` with probability ``p`` else ``box_right`` (SPEC §4)."""
        if self.kv_kind == "sample":
            return "sample"
        draw = torch.rand((), generator=self.kv_generator).item()
        return "box_left" if draw < self.kv_left_probability else "box_right"


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """``[N, S, H·D]`` → ``[N, H, S, D]`` (a view)."""
    return tensor.unflatten(-1, (heads, -1)).transpose(1, 2)


class ZeroSmoothAttnProcessor:
    """Processor for one ``Attention`` module (see the module docstring).

    Args:
        name: the module's qualified name in the UNet (the key of its cached states).
        axis: ``"spatial"`` (frames in the batch dim) or ``"temporal"`` (frames are the sequence).
        state: the wrapper's shared :class:`CascadeState`.
        original: the processor this one replaces; used outside ZeroSmooth calls.
    """

    def __init__(self, name: str, axis: str, state: CascadeState, original):
        if axis not in (SPATIAL, TEMPORAL):
            raise ValueError(f"axis must be 'spatial' or 'temporal', got {axis!r}")
        self.name = name
        self.axis = axis
        self.state = state
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        state = self.state
        if state.mode is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if attention_mask is not None or hidden_states.ndim != 3 or attn.spatial_norm is not None:
            raise NotImplementedError(
                f"ZeroSmooth supports attention on [batch, tokens, channels] inputs without masks or spatial "
                f"norms; module {self.name!r} got a {hidden_states.ndim}-d input"
                + (" with an attention mask" if attention_mask is not None else "")
            )
        if attn.group_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
            raise NotImplementedError(f"ZeroSmooth does not support group_norm/norm_q/norm_k in module {self.name!r}")
        residual = hidden_states
        cross = encoder_hidden_states is not None
        if cross and attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        # Stages correct (and record states for) a kind of attention only if the config says so.
        enabled = state.correct_cross if cross else (
            state.correct_temporal if self.axis == TEMPORAL else state.correct_spatial
        )
        if state.mode == "corrected" and enabled:
            out = self._corrected(attn, hidden_states, encoder_hidden_states)
        else:
            out = self._plain(attn, hidden_states, encoder_hidden_states, record=state.record and enabled)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    # --- frame-axis views -------------------------------------------------------------------

    def _frames_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The module-layout tensor ``[B·t, L, c]`` or ``[B·L, t, c]`` as a ``[B, t, L, c]`` view."""
        state = self.state
        if self.axis == SPATIAL:
            return tensor.unflatten(0, (state.batch, state.num_frames))
        if tensor.shape[1] != state.num_frames:
            raise RuntimeError(
                f"temporal module {self.name!r} saw {tensor.shape[1]} frames, expected {state.num_frames}"
            )
        return tensor.unflatten(0, (state.batch, -1)).permute(0, 2, 1, 3)

    def _module_layout(self, tensor: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_frames_view`: ``[B, t, L, c]`` → ``[B·t, L, c]`` or ``[B·L, t, c]``."""
        if self.axis == SPATIAL:
            return tensor.flatten(0, 1)
        return tensor.permute(0, 2, 1, 3).flatten(0, 1)

    def _record(self, tensor: torch.Tensor) -> None:
        if self.state.record:
            self.state.cache.put(self.state.stage, self.name, tensor)

    def _key_states(self) -> torch.Tensor:
        return self.state.cache.take(self.state.stage - 1, self.name)

    # --- the two paths ----------------------------------------------------------------------

    def _plain(self, attn, hidden_states, encoder_hidden_states, record: bool):
        """diffusers' ``AttnProcessor2_0`` up to ``to_out``, recording the projections if ``record``.

        Temporal self-attention of a corrected stage whose correction is switched off still runs
        over windows when the state says so.
        """
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key = attn.to_k(context)
        value = attn.to_v(context)
        if record:
            states = query if encoder_hidden_states is not None else torch.cat([query, key, value], dim=-1)
            self._record(self._frames_view(states))
        heads = attn.heads
        if self.axis == TEMPORAL and encoder_hidden_states is None and self.state.windowed:
            out = zs_kernels.windowed_attention(
                _heads(query, heads), _heads(key, heads), _heads(value, heads),
                window=self.state.window, stride=self.state.stride, weighting=self.state.weighting,
                backend=self.state.backend,
            )
        else:
            out = F.scaled_dot_product_attention(
                _heads(query, heads), _heads(key, heads), _heads(value, heads), dropout_p=0.0, is_causal=False
            )
        return out.transpose(1, 2).flatten(2).to(query.dtype)

    def _corrected(self, attn, hidden_states, encoder_hidden_states):
        """Back-project onto the previous stage's states, attend with both, blend (SPEC §4).

        Returns the blended attention output ``[N, S, C]`` in the module layout, before ``to_out``.
        """
        state = self.state
        key_states = self._key_states()
        heads = attn.heads
        if encoder_hidden_states is not None:
            # Cross-attention: the condition is the same for every frame, so only Q is corrected.
            query = attn.to_q(hidden_states)
            # back_project has no Triton kernel; its closed form is a single pass on any device.
            backend = "reference" if state.backend == "reference" else "torch"
            query_hat = zs_kernels.back_project(
                self._frames_view(query), key_states, "sample", state.scale, frame_dim=1, backend=backend
            )
            self._record(query_hat)
            key = _heads(attn.to_k(encoder_hidden_states), heads)
            value = _heads(attn.to_v(encoder_hidden_states), heads)
            out = F.scaled_dot_product_attention(_heads(query, heads), key, value)
            out_hat = F.scaled_dot_product_attention(_heads(self._module_layout(query_hat), heads), key, value)
            return out.lerp_(out_hat, state.weight).transpose(1, 2).flatten(2).to(query.dtype)

        kv_kind = "sample" if self.axis == TEMPORAL else state.draw_kv_kind()
        weight, bias = _stacked_projection(attn)
        qkv, qkv_hat = zs_kernels.corrected_qkv(
            self._frames_view(hidden_states), key_states, weight, bias,
            scale=state.scale, kv_kind=kv_kind, backend=state.backend,
        )
        self._record(qkv_hat)
        q, k, v = self._split_heads(qkv, heads)
        q_hat, k_hat, v_hat = self._split_heads(qkv_hat, heads)
        if self.axis == TEMPORAL:
            window, stride = (state.window, state.stride) if state.windowed else (state.num_frames, state.num_frames)
            out = zs_kernels.windowed_attention(
                q, k, v, window=window, stride=stride, weighting=state.weighting,
                corrected=(q_hat, k_hat, v_hat), blend=state.weight, backend=state.backend,
            )
        else:
            out = F.scaled_dot_product_attention(q, k, v)
            out = out.lerp_(F.scaled_dot_product_attention(q_hat, k_hat, v_hat), state.weight)
        return out.transpose(1, 2).flatten(2).to(hidden_states.dtype)

    def _split_heads(self, qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, t, L, 3C]`` projections → Q, K, V views ``[N, H, S, D]`` in the module's sequence layout."""
        return tuple(_heads(part, heads) for part in self._module_layout(qkv).chunk(3, dim=-1))


def _stacked_projection(attn) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``to_q | to_k | to_v`` weights stacked to ``[3C, C]`` and biases to ``[3C]`` (None if none has one).

    Stacked per call rather than cached: a cached copy would double the projections' memory.
    """
    layers = (attn.to_q, attn.to_k, attn.to_v)
    weight = torch.cat([layer.weight for layer in layers])
    if all(layer.bias is None for layer in layers):
        return weight, None
    biases = [layer.weight.new_zeros(layer.out_features) if layer.bias is None else layer.bias for layer in layers]
    bias = torch.cat(biases)
    return weight, bias
