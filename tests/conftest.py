"""Shared fixtures: the two offline datasets, loaded once per test session (read-only)."""

import os

# Before torch loads OpenMP: spinning threads made this suite up to 15x slower whenever other
# processes share the 2 cores (measured: test_training.py 211 s spinning, 15 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from models.data import DataSplits, load_dataset  # noqa: E402


@pytest.fixture(scope="session")
def digits_splits() -> DataSplits:
    """scikit-learn digits, 1x8x8, 10 classes: 1437 / 180 / 180 images."""
    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist5k_splits() -> DataSplits:
    """MNIST-5k, 1x28x28, 10 classes: 4000 / 500 / 500 images."""
    return load_dataset("mnist5k")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the machine is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits_vgg_small(digits_splits, tmp_path_factory) -> torch.nn.Module:
    """vgg_small trained for one epoch on digits (its own cache; read-only)."""
    from models.training import TrainConfig, get_base_model

    model, _ = get_base_model(
        "vgg_small",
        digits_splits,
        config=TrainConfig(epochs=1, progress=False),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        shipped_dir=None,
    )
    return model


@pytest.fixture(scope="session")
def digits_vgg_small_2ep(digits_splits, tmp_path_factory) -> torch.nn.Module:
    """vgg_small trained for two epochs on digits (its own cache; read-only): the base model of
    the search tests' envs."""
    from models.training import TrainConfig, get_base_model

    model, _ = get_base_model(
        "vgg_small",
        digits_splits,
        config=TrainConfig(epochs=2, progress=False),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    return model
