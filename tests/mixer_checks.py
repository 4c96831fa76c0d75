"""Checks shared by the mixer tests."""

import torch


@torch.no_grad()
def step_outputs(mixer, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Run ``mixer.step`` token by token over x (B, L, D) from a fresh state: the outputs stacked as (B, L, D), and
    the final state."""
    state = mixer.init_state(x.shape[0])
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state
