"""The TD3 math (Fujimoto et al. 2018), one small pure function per piece.

Deviations from the paper are commented where they happen.
"""
from __future__ import annotations

import torch


def smoothed_target_action(target_action: torch.Tensor, noise: torch.Tensor,
                           noise_clip: float) -> torch.Tensor:
    """Target policy smoothing: a' = clip(pi'(s') + clip(eps, -c, c), -1, 1)."""
    return (target_action + noise.clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)


def td_target(reward: torch.Tensor, terminated: torch.Tensor, next_q1: torch.Tensor,
              next_q2: torch.Tensor, gamma: float) -> torch.Tensor:
    """Clipped double-Q target y = r + gamma * (1 - terminated) * min(Q1', Q2').

    Only ``terminated`` masks bootstrapping: a truncated transition (time limit, simulator
    failure) bootstraps, because the state it ends in still has a future.
    """
    return reward + gamma * (1.0 - terminated) * torch.minimum(next_q1, next_q2)


def critic_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-weighted squared TD errors of both heads, and |TD error| per sample.

    With unit weights this is MSE(Q1, y) + MSE(Q2, y), as in the paper. The per-sample
    |TD error| for prioritized replay is the mean of the two heads' absolute errors.

    Returns:
        (scalar loss, detached |TD error| [B]).
    """
    d1 = q1 - target
    d2 = q2 - target
    # Deviation: per-sample importance weights of prioritized replay (ones when uniform).
    loss = (weight * (d1.square() + d2.square())).mean()
    return loss, (0.5 * (d1.abs() + d2.abs())).detach()


def policy_loss(q1_of_policy_action: torch.Tensor) -> torch.Tensor:
    """Deterministic policy gradient objective: maximise Q1(s, pi(s))."""
    return -q1_of_policy_action.mean()


def preactivation_penalty(preactivation: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight`` times the mean squared pre-tanh policy output: near 0 for actions inside
    (-1, 1), growing where the tanh saturates and the critic's gradient through it vanishes.
    (Deviation from the paper, off by default: ``td3.preactivation_l2``.)"""
    return weight * preactivation.square().mean()


def soft_update(targets: list[torch.Tensor], onlines: list[torch.Tensor], tau: float) -> None:
    """Polyak averaging theta' <- tau * theta + (1 - tau) * theta', one fused op for all."""
    with torch.no_grad():
        torch._foreach_lerp_(targets, onlines, tau)


def clip_grads(encoder: list[torch.Tensor], head: list[torch.Tensor], max_norm: float,
               device: torch.device) -> torch.Tensor:
    """Clips the gradients of ``encoder`` + ``head`` to a total L2 norm of ``max_norm`` (no
    clipping when it is 0), as ``torch.nn.utils.clip_grad_norm_`` does, and returns the
    encoder's gradient norm before clipping (0 when no encoder parameter has a gradient).

    One ``_foreach_norm`` pass serves both the diagnostic and the clipping.
    """
    enc = [p.grad for p in encoder if p.grad is not None]
    grads = enc + [p.grad for p in head if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm(grads)
    encoder_norm = (torch.linalg.vector_norm(torch.stack(norms[:len(enc)])) if enc
                    else torch.zeros((), device=device))
    if max_norm > 0.0:
        total = torch.linalg.vector_norm(torch.stack(norms))
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return encoder_norm


def weight_change(params: list[torch.Tensor], snapshot: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of (params - snapshot) as a device scalar; then refreshes ``snapshot``."""
    if not params:
        return torch.zeros(())
    with torch.no_grad():
        diff = torch._foreach_sub(params, snapshot)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(diff)))
        torch._foreach_copy_(snapshot, params)
    return norm
