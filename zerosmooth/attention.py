"""Attention of the cascade (SPEC §4–§5), installed as a hook on every ``Attention`` module.

What :class:`AttentionHook` does depends on the session's :class:`~zerosmooth.state.StageStep`:

* outside a ZeroSmooth call it runs the module's own forward (its processor, untouched);
* uncorrected stages (the key branch, baselines) compute what diffusers' ``AttnProcessor2_0``
  computes — plain attention goes through ``diffusers``' ``dispatch_attention_fn``, so a user's
  ``set_attention_backend`` is honoured — and, when a later stage needs them, record the module's
  projections in the session's key-state cache;
* corrected stages back-project their projections onto the previous stage's recorded ones
  (``zs_kernels.corrected_qkv`` for self-attention, ``zs_kernels.back_project`` on Q for
  cross-attention), run both attention passes and blend them ``o + w (ô - o)``; temporal
  self-attention runs both passes over FreeNoise windows in one ``zs_kernels.windowed_attention``
  call. They record their corrected projections for the next stage (SPEC §4, stage ≥ 3);
* cross-attention over a single condition token (SVD's image embedding) gives every query that
  token's value in every stage, so it is the value broadcast: no query or key projection, no
  attention call, nothing to correct or record.

Layouts: spatial modules see ``[B·t, L, C]`` (viewed ``[B, t, L, C]``), temporal ones ``[B·L, t, C]``
(viewed ``view(B, L, t, C).permute(0, 2, 1, 3)``); recorded states have logical shape
``[B, t, L, 3C]`` (self-attention, ``to_q | to_k | to_v``) or ``[B, t, L, C]`` (cross-attention, Q).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

import zs_kernels
from zs_kernels.corrected_qkv.vectorized import project
from zs_kernels.frames import box_ranges

from .hooks import ZeroSmoothHook
from .state import Session, StageStep

SPATIAL = "spatial"
TEMPORAL = "temporal"


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """``[N, S, H·D]`` → ``[N, H, S, D]`` (a view), the layout of ``zs_kernels.windowed_attention``."""
    return tensor.unflatten(-1, (heads, -1)).transpose(1, 2)


def _attend(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention of ``[N, S, H·D]`` projections through diffusers' dispatcher (the
    user's attention backend); returns ``[N, S, H·D]``."""
    heads = module.heads
    out = dispatch_attention_fn(
        query.unflatten(-1, (heads, -1)), key.unflatten(-1, (heads, -1)), value.unflatten(-1, (heads, -1)),
        backend=getattr(module.processor, "_attention_backend", None),
    )
    return out.flatten(2)


def _single_key_attention(module, hidden_states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Attention of ``hidden_states [N, S, C]`` over a one-token ``context [N or 1, 1, C_ctx]``
    (SVD's image embedding), ``[N, S, H·D]`` before ``to_out``.

    Softmax over a single score is exactly 1, so every query's output is the token's value, in
    every branch and whatever the correction does to the queries: ``to_v(context)`` broadcast, with
    no query or key projection and no attention call; bit-identical to PyTorch's attention on finite
    inputs. A query row holding a NaN gets the value too (PyTorch's CPU kernel gives it zeros); the
    NaN stays in the residual stream either way.
    """
    value = module.to_v(context)
    return value.expand(hidden_states.shape[0], hidden_states.shape[1], -1)


def _plain_linear(layer: torch.nn.Module) -> bool:
    """Whether calling ``layer`` is ``F.linear`` with its own weight and bias: a ``torch.nn.Linear``
    without forward hooks or a replaced forward (adapters, accelerate's offload hooks)."""
    return (type(layer) is torch.nn.Linear and not layer._forward_hooks and not layer._forward_pre_hooks
            and "forward" not in vars(layer))


def _from_heads(out: torch.Tensor) -> torch.Tensor:
    """``[N, H, S, D]`` → ``[N, S, H·D]``."""
    return out.transpose(1, 2).flatten(2)


class AttentionHook(ZeroSmoothHook):
    """Replaces one ``Attention`` module's forward while a ZeroSmooth call runs (module docstring).

    Args:
        slot: the wrapper's :class:`~zerosmooth.hooks.SessionSlot`.
        name: the module's qualified name in the UNet (the key of its cached states).
        axis: ``"spatial"`` (frames in the batch dim) or ``"temporal"`` (frames are the sequence).
    """

    def __init__(self, slot, name: str, axis: str):
        super().__init__(slot)
        if axis not in (SPATIAL, TEMPORAL):
            raise ValueError(f"axis must be 'spatial' or 'temporal', got {axis!r}")
        self.name = name
        self.axis = axis

    def new_forward(self, module, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        session = self.slot.session
        if session is None or session.step is None:
            return self.fn_ref.original_forward(hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        if attention_mask is not None or hidden_states.ndim != 3 or module.spatial_norm is not None:
            raise NotImplementedError(
                f"ZeroSmooth supports attention on [batch, tokens, channels] inputs without masks or spatial "
                f"norms; module {self.name!r} got a {hidden_states.ndim}-d input"
                + (" with an attention mask" if attention_mask is not None else "")
            )
        if module.group_norm is not None or module.norm_q is not None or module.norm_k is not None:
            raise NotImplementedError(f"ZeroSmooth does not support group_norm/norm_q/norm_k in module {self.name!r}")
        residual = hidden_states
        cross = encoder_hidden_states is not None
        if cross and module.norm_cross:
            encoder_hidden_states = module.norm_encoder_hidden_states(encoder_hidden_states)
        config, step = session.config, session.step
        # Stages correct (and record states for) a kind of attention only if the config says so.
        enabled = config.correct_cross if cross else (
            config.correct_temporal if self.axis == TEMPORAL else config.correct_spatial
        )
        if cross and encoder_hidden_states.shape[1] == 1:  # nothing to correct or record
            out = _single_key_attention(module, hidden_states, encoder_hidden_states)
        elif step.corrected and enabled:
            out = self._corrected(module, session, step, hidden_states, encoder_hidden_states)
        else:
            out = self._plain(module, session, step, hidden_states, encoder_hidden_states, record=step.record and enabled)
        out = module.to_out[1](module.to_out[0](out))
        if module.residual_connection:
            out = out + residual
        return out / module.rescale_output_factor

    # --- frame-axis views -------------------------------------------------------------------

    def _as_frames(self, tensor: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """The module-layout tensor ``[B·t, L, c]`` or ``[B·L, t, c]`` as a ``[B, t, L, c]`` view."""
        if self.axis == SPATIAL:
            return tensor.unflatten(0, (batch, frames))
        return tensor.unflatten(0, (batch, -1)).permute(0, 2, 1, 3)

    def _frames_view(self, tensor: torch.Tensor, step: StageStep) -> torch.Tensor:
        if self.axis == TEMPORAL and tensor.shape[1] != step.num_frames:
            raise RuntimeError(f"temporal module {self.name!r} saw {tensor.shape[1]} frames, expected {step.num_frames}")
        return self._as_frames(tensor, step.unet_batch, step.num_frames)

    def _module_layout(self, tensor: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_frames_view`: ``[B, t, L, c]`` → ``[B·t, L, c]`` or ``[B·L, t, c]``."""
        if self.axis == SPATIAL:
            return tensor.flatten(0, 1)
        return tensor.permute(0, 2, 1, 3).flatten(0, 1)

    def _record(self, session: Session, step: StageStep, tensor: torch.Tensor) -> None:
        if step.record:
            session.cache.put(step, self.name, tensor)

    # --- the two paths ----------------------------------------------------------------------

    def _plain(self, module, session: Session, step: StageStep, hidden_states, encoder_hidden_states, record: bool):
        """diffusers' ``AttnProcessor2_0`` up to ``to_out``, recording the projections if ``record``.

        Temporal self-attention of a corrected stage whose correction is switched off still runs
        over windows when the step says so.
        """
        layers = (module.to_q, module.to_k, module.to_v)
        if record and encoder_hidden_states is None and all(_plain_linear(layer) for layer in layers):
            # The recorded q | k | v is written by one GEMM per projection into its columns, and
            # the projections are views of it: no concatenated copy.
            qkv = project(self._frames_view(hidden_states, step), tuple(layer.weight for layer in layers),
                          tuple(layer.bias for layer in layers))
            self._record(session, step, qkv)
            query, key, value = self._module_layout(qkv).chunk(3, dim=-1)
        else:
            query = module.to_q(hidden_states)
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            key = module.to_k(context)
            value = module.to_v(context)
            if record:
                states = query if encoder_hidden_states is not None else torch.cat([query, key, value], dim=-1)
                self._record(session, step, self._frames_view(states, step))
        if self.axis == TEMPORAL and encoder_hidden_states is None and step.windowed:
            heads = module.heads
            out = zs_kernels.windowed_attention(
                _heads(query, heads), _heads(key, heads), _heads(value, heads),
                window=session.window, stride=session.stride, weighting=session.config.weighting,
                backend=session.config.backend,
            )
            return _from_heads(out).to(query.dtype)
        return _attend(module, query, key, value).to(query.dtype)

    def _corrected_cross(self, module, session: Session, step: StageStep, hidden_states, encoder_hidden_states,
                         key_states: torch.Tensor):
        """Cross-attention over several condition tokens (one token: :func:`_single_key_attention`):
        the condition is the same for every frame, so only Q is corrected, with ``sample``: Q̂ is Q
        except at the key frames, where it is the key branch's Q (``key_states``). Each query row
        attends on its own, so ô differs from o only at the key frames, and only those rows are
        attended a second time. Returns the blended output in the module layout."""
        config, scale = session.config, session.config.scale
        query = module.to_q(hidden_states)
        key = module.to_k(encoder_hidden_states)
        value = module.to_v(encoder_hidden_states)
        out = _attend(module, query, key, value)
        if step.record:
            # back_project has no Triton kernel; its closed form is a single pass on any device.
            backend = "reference" if config.backend == "reference" else "torch"
            query_hat = zs_kernels.back_project(
                self._frames_view(query, step), key_states, "sample", scale, frame_dim=1, backend=backend
            )
            self._record(session, step, query_hat)
        key_frames = key_states.shape[1]
        query_keys = self._module_layout(key_states)
        if self.axis == SPATIAL and key.shape[0] == out.shape[0]:
            # One row of conditions per frame: keep the key frames' rows.
            key, value = (self._frames_view(t, step)[:, ::scale].flatten(0, 1) for t in (key, value))
        out_keys = self._as_frames(_attend(module, query_keys, key, value), step.unet_batch, key_frames)
        self._frames_view(out, step)[:, ::scale].lerp_(out_keys, step.blend)
        return out.to(query.dtype)

    def _corrected(self, module, session: Session, step: StageStep, hidden_states, encoder_hidden_states):
        """Back-project onto the previous stage's states, attend with both, blend (SPEC §4).

        Returns the blended attention output ``[N, S, C]`` in the module layout, before ``to_out``.
        """
        config = session.config
        key_states = session.cache.take(step, self.name)
        if encoder_hidden_states is not None:
            return self._corrected_cross(module, session, step, hidden_states, encoder_hidden_states, key_states)

        kv_operator = "sample" if self.axis == TEMPORAL else session.draw_kv_operator()
        layers = (module.to_q, module.to_k, module.to_v)
        qkv, qkv_hat = zs_kernels.corrected_qkv(
            self._frames_view(hidden_states, step), key_states,
            tuple(layer.weight for layer in layers), tuple(layer.bias for layer in layers),
            scale=config.scale, kv_kind=kv_operator, backend=config.backend,
        )
        self._record(session, step, qkv_hat)
        if self.axis == TEMPORAL:
            heads = module.heads
            q, k, v = (_heads(part, heads) for part in self._module_layout(qkv).chunk(3, dim=-1))
            q_hat, k_hat, v_hat = (_heads(part, heads) for part in self._module_layout(qkv_hat).chunk(3, dim=-1))
            window, stride = (session.window, session.stride) if step.windowed else (step.num_frames, step.num_frames)
            out = zs_kernels.windowed_attention(
                q, k, v, window=window, stride=stride, weighting=config.weighting,
                corrected=(q_hat, k_hat, v_hat), blend=step.blend, backend=config.backend,
            )
            return _from_heads(out).to(hidden_states.dtype)
        out = _attend(module, *self._module_layout(qkv).chunk(3, dim=-1))
        # Spatial attention stays within a frame, and the frames after the last key frame and the
        # last K/V box (box_left's last n - 1) keep their Q, K and V: their ô is o, so only the
        # frames before them are attended a second time.
        scale = config.scale
        changed = max(box_ranges(kv_operator, step.num_frames // scale, scale)[-1][1],
                      step.num_frames - scale + 1)
        out_hat = _attend(module, *self._module_layout(qkv_hat[:, :changed]).chunk(3, dim=-1))
        self._frames_view(out, step)[:, :changed].lerp_(self._as_frames(out_hat, step.unet_batch, changed), step.blend)
        return out.to(hidden_states.dtype)
