"""AMC's least-squares reconstruction of the layers whose input channels were pruned."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from envs.pruning import Pruner
from envs.reconstruction import Reconstructor, _kept_indices


def test_kept_indices_are_recovered_from_the_weights() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 5, 3, 3)
    keep_out, keep_in = torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4])
    found_in, found_out = _kept_indices(weight, weight[keep_out][:, keep_in])
    assert found_in.tolist() == [1, 3, 4] and found_out.tolist() == [0, 2, 5]


def _linear_chain() -> nn.Module:
    """conv1 -> conv2 -> pool -> linear, no nonlinearity: conv2 sees conv1's channels linearly.

    conv1's channel 0 is 0.2 times (channel 1 - channel 2), so it has the lowest L1
    norm (pruned first) and is a linear combination of channels the pruned model keeps.
    """
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.Conv2d(4, 6, 3, padding=1, bias=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    with torch.no_grad():
        w = model[0].weight
        w[0] = 0.2 * (w[1] - w[2])
    return model.eval()


def test_reconstruction_recovers_a_linearly_redundant_channel() -> None:
    model = _linear_chain()
    data = TensorDataset(torch.randn(200, 3, 8, 8), torch.zeros(200, dtype=torch.long))
    pruner = Pruner(model, torch.zeros(1, 3, 8, 8))
    unit = next(u for u in pruner.units if u.out_channels == 4)
    pruned = pruner.apply({unit.name: 0.25})  # removes conv1's channel 0
    assert pruned[0].out_channels == 3 and pruned[1].in_channels == 3

    fresh = torch.randn(50, 3, 8, 8)  # not the calibration images
    with torch.no_grad():
        target = model[1](model[0](fresh))
        before = (pruned[1](pruned[0](fresh)) - target).abs().max().item()
    refitted = Reconstructor(model, data, images=100, positions=20, ridge=1e-9).apply(pruned)
    assert refitted == ["1"]  # only the layer whose inputs were pruned
    with torch.no_grad():
        after = (pruned[1](pruned[0](fresh)) - target).abs().max().item()
    assert before > 0.05  # dropping the channel changed conv2's output
    assert after < 1e-3 * before  # the kept channels reproduce it exactly (up to rounding)
    # The original model is untouched.
    assert torch.equal(model[0].weight[0], 0.2 * (model[0].weight[1] - model[0].weight[2]))


def test_env_repairs_with_reconstruction_when_configured(digits_splits) -> None:
    from fakes import MacsLatency

    from envs.pruning import recalibrate_bn
    from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
    from models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("vgg_small", digits_splits.input_shape, 10).eval()
    envs = {
        flag: ChannelPruningEnv(
            model,
            digits_splits.train,
            digits_splits.reward_val,
            PruningEnvConfig(cost="macs", bn_batches=2, reconstruct=flag),
            latency=MacsLatency(model, digits_splits.input_shape),
        )
        for flag in (False, True)
    }
    strategy = {u.name: 0.5 for u in envs[True].units}
    plain, rebuilt = envs[False].prune(strategy), envs[True].prune(strategy)
    # By hand: the same pruned copy, refitted by a Reconstructor, then BN-recalibrated.
    expected = envs[False].pruner.apply(strategy)
    Reconstructor(model, digits_splits.train).apply(expected)
    recalibrate_bn(expected, digits_splits.train, num_batches=2)
    second_conv = "features.3.weight"
    assert not torch.equal(plain.state_dict()[second_conv], rebuilt.state_dict()[second_conv])
    for key, value in expected.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key]), key
