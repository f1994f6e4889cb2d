"""The run configuration: every setting of a search run, each with its one default.

:class:`RunConfig` composes the library's own settings (:class:`PruningEnvConfig` with its
:class:`LatencyConfig`) and small sections for the data, the search, the device and the output.
A default lives in the dataclass field and nowhere else: the scripts' flags read theirs with
:func:`default`, ``config.json`` is :meth:`RunConfig.to_dict` (the nested ``dataclasses.asdict``,
one object per section) and ``--resume`` reads it back with :func:`load_run_config`. Inside the
scripts the settings travel flat, keyed by flag name (:meth:`RunConfig.to_settings`, :data:`FLAT`).

Two seeds, never mixed:
    - ``data_seed`` (``--data-seed``) chooses which images go to train, reward and test. Base
      models are cached per split, so every script that should find the same base model must
      use the same data seed (default 0).
    - ``seed`` (``--seed``) seeds the search: the agent, its exploration, the base model's
      training (initial weights, batch order) and the fine-tunes.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from agents.ddpg import AgentConfig
from agents.selection import SelectionConfig
from envs.features import DEFAULT_FEATURES, check_features
from envs.pruning_env import PruningEnvConfig
from models.errors import CheckpointError
from models.renamed import RENAMED_KEYS, check_current_names, old_key
from models.zoo import DEFAULT_MODEL


@dataclass(frozen=True)
class DataConfig:
    """The network and the images.

    Attributes:
        model: zoo or torchvision name, or ``package.module:callable``; comma-separated names
            search one agent over several networks.
        dataset: ``mnist5k``, ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10`` or
            ``imagefolder:PATH``.
        data_dir: where torchvision datasets are stored (None: torchvision's default).
        download: download a missing torchvision dataset.
        max_samples: a stratified subset of this many images (None: all).
        image_size: resize imagefolder images to this square size in px (None: as stored).
        data_seed: seed of the split (which images go to train, reward and test) and of the
            ``max_samples`` subset. Not the search seed: see the module docstring.
        base_epochs: base-model training epochs (None: :class:`TrainConfig`'s).
        cache_dir: base-model cache (None: ``$RLPRUNE_CACHE`` or ``~/.cache/rlprune``).
        weights: the user's trained state_dict for ``model`` (None: rlprune's base model).
        weights_sha256: that file's checksum, recorded when the run starts.
    """

    model: str = DEFAULT_MODEL
    dataset: str = "mnist5k"
    data_dir: str | None = None
    download: bool = False
    max_samples: int | None = None
    image_size: int | None = None
    data_seed: int = 0
    base_epochs: int | None = None
    cache_dir: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None


@dataclass(frozen=True)
class SearchConfig:
    """The agent's search and the final choice.

    Attributes:
        episodes: search episodes, warm-up included.
        warmup: episodes of random actions before the agent learns.
        warmup_mode: how those episodes explore: ``"actions"`` (AMC's uniform random actions,
            unit by unit) or ``"strategies"`` (whole strategies at the target, drawn as
            EagleEye's sampled search draws them); see :class:`agents.ddpg.AgentConfig`.
        noise_sigma: the agent's exploration sigma after the warm-up, in pruning-ratio units
            (AMC's 0.5; 0.15 with a short warm-up searches near the anchor rule, see
            :class:`agents.ddpg.AgentConfig`).
        revisit_boost: multiply that sigma by this after each episode that re-visits an
            architecture already evaluated, divide by it after each new one (1: off, AMC); see
            :class:`agents.ddpg.AgentConfig`.
        seed: the search seed: agent, exploration, base-model training and fine-tunes.
        select_top_k: the final choice re-scores this many of the search's best (1: off).
        select_steps: fine-tune steps of that re-scoring.
        envs: episodes evaluated in parallel, each in its own worker.
        ray_address: run those workers as Ray actors of this cluster (``"local"``: start one).
    """

    episodes: int = 300
    warmup: int = AgentConfig.warmup_episodes
    warmup_mode: str = AgentConfig.warmup_mode
    noise_sigma: float = AgentConfig.noise_sigma
    revisit_boost: float = AgentConfig.revisit_boost
    seed: int = AgentConfig.seed
    select_top_k: int = SelectionConfig.top_k
    select_steps: int = SelectionConfig.fine_tune_steps
    envs: int = 1
    ray_address: str | None = None


@dataclass(frozen=True)
class DeviceConfig:
    """Where the network runs and where the search's latency comes from.

    Attributes:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        latency_table: a per-layer latency table measured on another device (None: timed here).
    """

    device: str = "auto"
    latency_table: str | None = None


@dataclass(frozen=True)
class OutputConfig:
    """The delivered model and where the run is written.

    Attributes:
        fine_tune_epochs: fine-tune epochs of the delivered model after the search.
        output_dir: parent directory of run directories.
        name: run directory name (None: from the settings).
        no_progress: no progress bars.
    """

    fine_tune_epochs: int = 2
    output_dir: str = "runs"
    name: str | None = None
    no_progress: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a search run (``scripts/train_agent.py``)."""

    data: DataConfig = field(default_factory=DataConfig)
    env: PruningEnvConfig = field(default_factory=PruningEnvConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> RunConfig:
        """The configuration of flat settings (flag names, e.g. ``vars(args)``); a missing key
        keeps its default, a key that is no setting (a script's own flag) is ignored.

        Raises:
            RlpruneError: An impossible environment setting (pruning ratios, reward, cost,
                features).
        """
        values = {FLAT[k]: v for k, v in settings.items() if k in FLAT}
        if ("env", "features") in values:
            values["env", "features"] = feature_names(values["env", "features"])
        return _build(cls, values)

    def to_dict(self) -> dict[str, Any]:
        """``config.json``: every field, nested by section (``{"data": {...}, "env": {...,
        "latency": {...}}, "search": ..., "device": ..., "output": ...}``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The configuration of :meth:`to_dict`'s form; a missing field keeps its default.

        Raises:
            KeyError: A key that is no field (its dotted path in the message).
            TypeError: A section that is not a dict.
            RlpruneError: An impossible environment setting.
        """
        return _from_dict(cls, data, "")

    def to_settings(self) -> dict[str, Any]:
        """Flat settings keyed by flag name (what the scripts pass around, reports, TensorBoard
        HParams); ``features`` is None for the default set."""
        flat = {}
        for key, path in FLAT.items():
            value: Any = self
            for name in path:
                value = getattr(value, name)
            flat[key] = value
        features = tuple(flat["features"])
        flat["features"] = None if features == DEFAULT_FEATURES else ",".join(features)
        return flat


def _flat_names() -> dict[str, tuple[str, ...]]:
    """Flag name (``latency_batch_size``) -> path of its field (``env.latency.batch_size``)."""
    flat = {f.name: ("data", f.name) for f in fields(DataConfig)}
    env = (
        "target",
        "cost",
        "reward",
        "min_pruning_ratio",
        "max_pruning_ratio",
        "importance",
        "round_to",
        "actions",
        "anchor_rule",
    )
    flat.update(
        {
            name: ("env", name)
            for name in (
                *env,
                "bn_batches",
                "reconstruct",
                "features",
                "latency_bridge",
                "exact_budget",
            )
        }
    )
    latency = {"latency_batch_size": "batch_size", "latency_repeats": "repeats"}
    latency.update(threads="threads", latency_backend="backend")
    flat.update({key: ("env", "latency", name) for key, name in latency.items()})
    for section, cls in (("search", SearchConfig), ("device", DeviceConfig)):
        flat.update({f.name: (section, f.name) for f in fields(cls)})
    flat.update({f.name: ("output", f.name) for f in fields(OutputConfig)})
    return flat


#: Flag name -> path of its field in :class:`RunConfig`.
FLAT: dict[str, tuple[str, ...]] = _flat_names()


def _build(cls: type, values: dict[tuple[str, ...], Any]) -> Any:
    """``cls`` with the values at their paths (each section built once, then validated)."""
    kwargs = {}
    for f in fields(cls):
        if (f.name,) in values:
            kwargs[f.name] = values[f.name,]
            continue
        inner = {path[1:]: v for path, v in values.items() if path[0] == f.name}
        if inner:
            kwargs[f.name] = _build(f.default_factory, inner)
    return cls(**kwargs)


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """``cls`` from its nested dict; sections (dataclass fields) recursively."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for name, value in data.items():
        if name not in known:
            raise KeyError(f"{where}{name}")
        factory = known[name].default_factory
        if is_dataclass(factory):
            if not isinstance(value, dict):
                raise TypeError(f"{where}{name} is not an object of settings")
            value = _from_dict(factory, value, f"{where}{name}.")
        kwargs[name] = value
    return cls(**kwargs)


def default(key: str) -> Any:
    """The default of the setting named by flag ``key`` (``"latency_batch_size"``), read from
    its dataclass field: the one place it is written."""
    cls: Any = RunConfig
    *sections, name = FLAT[key]
    for section in sections:
        cls = next(f for f in fields(cls) if f.name == section).default_factory
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()


def feature_names(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``--features`` (comma-separated, a list from config.json, or None: the default set)."""
    if value is None:
        return DEFAULT_FEATURES
    names = value.split(",") if isinstance(value, str) else value
    return check_features([n.strip() for n in names if n.strip()])


#: The top-level keys of ``config.json``.
SECTIONS: tuple[str, ...] = tuple(f.name for f in fields(RunConfig))


def load_run_config(path: Path) -> RunConfig:
    """A run's ``config.json`` (:meth:`RunConfig.to_dict`'s form). A setting added after the
    run started is missing from its file and gets its default.

    Raises:
        CheckpointError: The file is not a JSON object of settings, or was written by an older
            rlprune (flat settings keyed by flag name, or a renamed key such as ``min_ratio``).
        RlpruneError: A setting is impossible (e.g. an unknown reward).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not JSON ({exc.msg}); start a new run") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds no run settings; start a new run")
    flat = [k for k in data if k not in SECTIONS]
    if flat:
        key = old_key(data) or flat[0]
        field_path = FLAT.get(RENAMED_KEYS.get(key, key))
        now = f", now {'.'.join(field_path)}" if field_path else ""
        raise CheckpointError(
            f"{path} was written by an older rlprune (flat settings such as '{key}'{now}); "
            "it cannot be resumed: start a new run with the same flags"
        )
    check_current_names(data, path, "start a new run with the same flags")
    try:
        return RunConfig.from_dict(data)
    except KeyError as exc:
        raise CheckpointError(
            f"{path}: '{exc.args[0]}' is no setting of this rlprune; start a new run"
        ) from None
    except TypeError as exc:
        raise CheckpointError(
            f"{path} is not a run configuration ({exc}); start a new run"
        ) from None
