"""What the hooks read during a ZeroSmooth call: the session of one call and the UNet call in progress.

* :class:`Session` — one ZeroSmooth call: its config, temporal windows, the K/V operator generator
  and the :class:`KeyStateCache`. Created when a call starts, dropped when it ends.
* :class:`StageStep` — one UNet call: which stage runs, at which strengths. Immutable; the sampler
  sets a new one on the session before every UNet call and clears it after.

Outside a call (``session.step is None``) every hook passes its module through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .config import ZeroSmoothConfig


class KeyStateCache:
    """States recorded by stage ``s`` for stage ``s + 1``, keyed by ``(stage, step, site name)``.

    Stage ``s + 1`` at step ``k`` takes what stage ``s`` recorded at step ``k``; an entry is removed
    when read. In the lockstep cascade only one step's states are ever alive; a cascade with a pull
    may hold a whole stage's (``ZeroSmoothConfig.key_state_budget``). ``peak_bytes`` is the most
    ever held at once; ``recorded_bytes`` what every stage records over the cascade, counted once
    however often a stage is re-run (what offloading every step's states would hold).
    """

    def __init__(self):
        self._entries: dict[tuple[int, int, str], torch.Tensor] = {}
        self._recorded_this_pass: dict[int, int] = {}
        self._recorded_by_stage: dict[int, int] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    @staticmethod
    def _nbytes(tensor: torch.Tensor) -> int:
        return tensor.untyped_storage().nbytes()

    @property
    def recorded_bytes(self) -> int:
        return sum(self._recorded_by_stage.values())

    def put(self, step: "StageStep", name: str, tensor: torch.Tensor) -> None:
        """Record ``tensor`` as stage ``step.stage``'s state at ``name`` and step ``step.step_index``."""
        key = (step.stage, step.step_index, name)
        if key in self._entries:
            raise RuntimeError(f"key states of stage {step.stage} for {name!r} recorded twice at step "
                               f"{step.step_index}")
        self._entries[key] = tensor
        size = self._nbytes(tensor)
        self.current_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        self._recorded_this_pass[step.stage] = self._recorded_this_pass.get(step.stage, 0) + size
        self._recorded_by_stage[step.stage] = self._recorded_this_pass[step.stage]

    def take(self, step: "StageStep", name: str) -> torch.Tensor:
        """Remove and return what the stage before ``step.stage`` recorded at ``name`` at the same step."""
        key = (step.stage - 1, step.step_index, name)
        try:
            tensor = self._entries.pop(key)
        except KeyError:
            raise RuntimeError(
                f"no key states of stage {key[0]} for {name!r} at step {key[1]}: the previous stage did not run "
                "it at this step"
            ) from None
        self.current_bytes -= self._nbytes(tensor)
        return tensor

    def start_pass(self) -> None:
        """The stages run next record afresh (a re-run stage records what it recorded before)."""
        self._recorded_this_pass = {}

    def discard(self, stage: int) -> None:
        """Drop what stage ``stage`` recorded: states no stage of the running pass reads."""
        for key in [key for key in self._entries if key[0] == stage]:
            self.current_bytes -= self._nbytes(self._entries.pop(key))

    def held_by(self, stage: int) -> int:
        """How many entries stage ``stage`` recorded that were not read yet."""
        return sum(key[0] == stage for key in self._entries)

    def bytes_held_by(self, stage: int) -> int:
        """Bytes of the entries stage ``stage`` recorded that were not read yet."""
        return sum(self._nbytes(tensor) for key, tensor in self._entries.items() if key[0] == stage)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class StageStep:
    """One UNet call of the cascade: stage ``stage`` (1-based) at denoising step ``step_index``.

    ``unet_batch`` is the UNet's batch (videos × 2 under classifier-free guidance); ``corrected``
    says the stage is a corrected long branch; ``record`` that a later stage reads its states;
    ``blend`` and ``residual`` are the step's attention blend and residual strength; ``windowed``
    that temporal self-attention runs over windows; ``position_factor`` divides frame positions.
    """

    stage: int
    num_frames: int
    unet_batch: int
    step_index: int = 0
    corrected: bool = False
    record: bool = False
    blend: float = 0.0
    residual: float = 0.0
    windowed: bool = False
    position_factor: float = 1.0


@dataclass
class Session:
    """One ZeroSmooth call as the hooks see it (see the module docstring)."""

    config: ZeroSmoothConfig
    window: int
    stride: int
    kv_generator: torch.Generator
    cache: KeyStateCache = field(default_factory=KeyStateCache)
    step: Optional[StageStep] = None

    def draw_kv_operator(self) -> str:
        """Frame operator of spatial K/V for one attention call (SPEC §4): under ``"random_box"``,
        ``box_left`` with probability ``p`` else ``box_right``; otherwise the configured operator."""
        operator = self.config.kv_operator
        if operator != "random_box":
            return operator
        draw = torch.rand((), generator=self.kv_generator).item()
        return "box_left" if draw < self.config.kv_left_probability else "box_right"
