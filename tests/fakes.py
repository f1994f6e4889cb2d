"""Test-only stand-ins for noisy measurements (never for the part under test)."""

import time
from collections.abc import Callable

import torch
from torch import nn

from envs.pruning import count_cost


class MacsLatency:
    """Deterministic stand-in for the measured latency: proportional to MACs, 10 ms at full size.

    Measured latency is noisy on a shared machine; tests that are not about latency use this so
    they are fast and deterministic. It implements :class:`envs.pruning_env.LatencySource`.
    """

    def __init__(self, reference: torch.nn.Module, input_shape) -> None:
        self.example = torch.zeros(1, *input_shape)
        self.base_macs = count_cost(reference, self.example)[0]

    def profile(self, layer_names):
        return {name: 1.0 for name in layer_names}, 0.5

    def relative_latency(self, model, fresh=False):
        relative = count_cost(model, self.example)[0] / self.base_macs
        return relative, 10.0 * relative


def busy_wait(ms: float) -> None:
    """Occupies the CPU for ``ms`` ms (a sleep would add the scheduler's wake-up delay)."""
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


class Wait(nn.Module):
    """Identity whose forward pass takes a known time, ``ms`` milliseconds."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms = ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        busy_wait(self.ms)
        return x


class SlowConv(nn.Conv2d):
    """A 3x3 convolution that takes ``fixed_ms + ms * (kept share of in x out channels)`` longer.

    A layer of known, channel-dependent duration that Torch-Pruning prunes like any convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, ms: float, fixed_ms: float = 0.0):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=False)
        self.ms, self.fixed_ms = ms, fixed_ms
        self.full = in_channels * out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        busy_wait(self.fixed_ms + self.ms * self.in_channels * self.out_channels / self.full)
        return super().forward(x)


class CurveLatency:
    """Deterministic latency of a pruned model from its real layer widths, non-linear in them.

    Each layer named in :meth:`profile` takes ``layer_ms * curve(f)``, ``f`` being the share of its
    weights (so of its MACs) the pruned model kept, plus a fixed ``overhead_ms``. :meth:`profile`
    returns the exact table of the unpruned model, so only ``curve`` (which the env's estimate
    takes as the identity) separates the estimate from this "measurement". It implements
    :class:`envs.pruning_env.LatencySource`.
    """

    def __init__(
        self,
        reference: nn.Module,
        curve: Callable[[float], float],
        layer_ms: float = 1.0,
        overhead_ms: float = 0.5,
    ) -> None:
        self.weights = {n: m.weight.numel() for n, m in reference.named_modules() if _layer(m)}
        self.curve, self.layer_ms, self.overhead_ms = curve, layer_ms, overhead_ms
        self.base_ms = overhead_ms + layer_ms * len(self.weights)

    def profile(self, layer_names):
        return {name: self.layer_ms for name in layer_names}, self.overhead_ms

    def latency_ms(self, model: nn.Module) -> float:
        kept = {n: m.weight.numel() for n, m in model.named_modules() if n in self.weights}
        shares = [kept[n] / full for n, full in self.weights.items()]
        return self.overhead_ms + self.layer_ms * sum(self.curve(f) for f in shares)

    def relative_latency(self, model, fresh=False):
        ms = self.latency_ms(model)
        return ms / self.base_ms, ms


def _layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d | nn.Linear)


def record_episodes(env) -> list[list[float]]:
    """Wraps ``env.step`` (on this instance) to record the pruning ratio of every step; returns
    the list that fills with one list of ratios per finished episode (a spy, not a stand-in)."""
    episodes: list[list[float]] = [[]]
    step = env.step

    def recording_step(action):
        out = step(action)
        episodes[-1].append(out[4]["pruning_ratio"])
        if out[2] or out[3]:  # terminated or truncated
            episodes.append([])
        return out

    env.step = recording_step
    return episodes
