"""The face every student mixer shows (Hyena, MultiHyena, Mamba, Mamba-2, and the Laughing Hyena mixers).

A mixer replaces one attention block's token mixing: (B, L, D) -> (B, L, D). Beside the parallel ``forward`` it
offers a recurrent ``step`` with O(1) work and memory per token, and its materialised token-mixing matrix, so the UI
and the MOHAWK stage-1 loss can compare it with the teacher's attention matrix.

Inner form. Every mixer factors as  out_proj( M @ u )  with a per-head mixing matrix M (B, H, L, L) applied to an
inner input u (B, L, H, P), possibly with element-wise gates before/after that are folded into M. ``mix_io(x)``
returns the pair (u, y) with y[b, :, h, :] == M[b, h] @ u[b, :, h, :]; tests use it to check ``mixing_matrix``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Mixer(nn.Module):
    """Abstract token mixer. Shapes: B batch, L length, D model width, H heads, P head width."""

    d_model: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
        """Recurrent state before the first token (a dict of tensors)."""
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One token: x_t (B, D) -> y_t (B, D), and the next state. O(1) in the position."""
        raise NotImplementedError

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """A whole prompt x (B, L, D) -> (y (B, L, D), the state after its L tokens), ready for ``step``.

        Default: y from the parallel ``forward``, the state by ``extend`` from the empty state (its outputs dropped).
        Mixers that can read their final state off the parallel pass (a chunked scan's last chunk state) override it.
        """
        _, state = self.extend(x, self.init_state(x.shape[0], device=x.device, dtype=x.dtype))
        return self(x), state

    def extend(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Continue from ``state`` over the next L tokens x (B, L, D): (y (B, L, D), the state after them), equal to
        L calls of ``step`` (a chunked prefill, or verifying several drafted tokens at once).

        Default: those L steps. Mixers whose parallel pass can start from a state (a scan's initial state) override
        it with one parallel pass."""
        outputs = []
        for t in range(x.shape[1]):
            y_t, state = self.step(x[:, t], state)
            outputs.append(y_t)
        return torch.stack(outputs, dim=1), state

    def verify(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """A few drafted tokens x (B, T, D) after ``state``: (y (B, T, D) as ``extend`` gives it, pending), without
        changing the state; ``accept`` then moves the state on by any n <= T of them (speculative decoding that
        keeps some of the drafted tokens). Mixers that cannot do this leave it undefined (``verifies`` tells)."""
        raise NotImplementedError(f"{type(self).__name__} cannot verify drafted tokens without moving its state")

    def accept(self, state: Any, pending: Any, n: int) -> Any:
        """``state`` moved on, in place, by the first ``n`` tokens of the ``verify`` call that returned ``pending``."""
        raise NotImplementedError(f"{type(self).__name__} cannot verify drafted tokens without moving its state")

    def mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """Materialised causal token-mixing matrix for input x (B, L, D): (B, H, L, L), M[b, h, l, s] = 0 for s > l."""
        raise NotImplementedError

    def filter(self, L: int) -> torch.Tensor | None:
        """The long-convolution filters over ``L`` taps, (N, L), for mixers whose mixing is a fixed convolution
        (the Hyena family, which overrides this); None for mixers whose mixing depends on the input (Mamba)."""
        return None

    def mix_io(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, y), both (B, L, H, P): the inner input the mixing matrix acts on and the inner output it produces."""
        raise NotImplementedError


def verifies(mixer: Mixer) -> bool:
    """Whether ``mixer`` has ``verify`` and ``accept`` (outputs of drafted tokens without moving its state)."""
    return type(mixer).verify is not Mixer.verify and type(mixer).accept is not Mixer.accept
