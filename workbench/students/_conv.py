"""Causal depthwise 1-D convolution with an O(1) recurrent step on a ring buffer (the short convolution of every mixer).

    y[t, c] = bias[c] + Σ_{k=0..W-1} weight[c, 0, k] · x[t - (W-1) + k, c]        (x before position 0 is zero)

The weight keeps nn.Conv1d's depthwise layout (C, 1, W), so mamba-ssm and transformers checkpoints load as they are.
For decoding, a ring buffer (B, C, W) holds the last W inputs in slots position mod W: each step writes one slot in
place and reads the window in order, so nothing is shifted and the buffer keeps its address (CUDA-graph friendly).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.ops.causal_conv import causal_conv1d, causal_conv1d_step


class CausalConv1d(nn.Module):
    """Depthwise causal conv over (B, L, C) with ``step`` for one token. C channels, W taps."""

    def __init__(self, channels: int, width: int, bias: bool = True):
        super().__init__()
        self.channels, self.width = channels, width
        self.weight = nn.Parameter(torch.empty(channels, 1, width))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nn.Conv1d's default: uniform in ±1/√fan_in, fan_in = W for a depthwise filter."""
        bound = 1 / math.sqrt(self.width)
        self.weight.uniform_(-bound, bound)
        if self.bias is not None:
            self.bias.uniform_(-bound, bound)

    @torch.no_grad()
    def init_identity_(self) -> None:
        """Make the conv the identity map: the last tap (the current token) 1, the others and the bias 0."""
        self.weight.zero_()
        self.weight[:, 0, -1] = 1
        if self.bias is not None:
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        return causal_conv1d(x, self.weight[:, 0], self.bias)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The ring buffer before the first token: (B, C, W) zeros."""
        return torch.zeros(batch_size, self.channels, self.width, device=device, dtype=dtype)

    def state_after(self, x: Tensor) -> Tensor:
        """The ring buffer ``step`` holds after the inputs x (B, L, C): (B, C, W), the last W inputs (zeros before
        position 0) with the input of position p in slot p mod W (a prefill's state, without stepping)."""
        L, W = x.shape[1], self.width
        last = F.pad(x[:, -W:].transpose(1, 2), (max(W - L, 0), 0))   # (B, C, W): positions L-W .. L-1 in order
        return last.roll(L % W, dims=-1)

    def extend(self, x: Tensor, buffer: Tensor, position: Tensor) -> Tensor:
        """The conv of x (B, L, C) continuing after ``position`` tokens whose last W inputs ``buffer`` (B, C, W)
        holds: y (B, L, C), as ``forward`` of the whole sequence would give for these L positions. The buffer is
        updated in place to the state after them (slots by absolute position, as ``step`` writes them)."""
        y, seq = self.window(x, buffer, position)
        self.keep(seq, buffer, position, x.shape[1])
        return y

    def window(self, x: Tensor, buffer: Tensor, position: Tensor) -> tuple[Tensor, Tensor]:
        """``extend``'s conv without changing the buffer: (y (B, L, C), seq (B, W + L, C): the buffer's W inputs in
        order, then x), ``seq`` being what ``keep`` moves the buffer on with. Device work only (``position`` stays a
        tensor), so it can be captured in a CUDA graph."""
        W = self.width
        oldest_first = (position + torch.arange(W, device=buffer.device)) % W    # slots of positions p-W .. p-1
        seq = torch.cat([buffer.index_select(2, oldest_first).transpose(1, 2).to(x.dtype), x], dim=1)  # (B, W+L, C)
        return causal_conv1d(seq[:, 1:], self.weight[:, 0], self.bias)[:, W - 1:], seq   # positions p .. p+L-1

    def keep(self, seq: Tensor, buffer: Tensor, position: Tensor, n: int) -> None:
        """Move ``buffer`` on by the first ``n`` new inputs of ``window``'s ``seq`` (positions p .. p+n-1, p =
        ``position``): it then holds positions p+n-W .. p+n-1, each in its slot (position mod W)."""
        W = self.width
        slots = (position + n - W + torch.arange(W, device=buffer.device)) % W
        buffer.index_copy_(2, slots, seq[:, n:n + W].transpose(1, 2).to(buffer.dtype))

    def step(self, x_t: Tensor, buffer: Tensor, position: Tensor) -> Tensor:
        """x_t (B, C) at ``position`` (a 0-dim integer tensor) -> y_t (B, C). Writes x_t into ``buffer`` in place."""
        return causal_conv1d_step(x_t, buffer, position, self.weight[:, 0], self.bias)
