"""Test-only stand-ins for noisy measurements (never for the part under test)."""

import torch

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

    def ratio(self, model):
        ratio = count_cost(model, self.example)[0] / self.base_macs
        return ratio, 10.0 * ratio
