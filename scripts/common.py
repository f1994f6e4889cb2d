"""Flags and error handling shared by the rlprune scripts (only scripts read the command line)."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU, spinning threads made
# training 3-14x slower here. Set before torch is imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import envs  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.config import default  # noqa: E402
from agents.workload import Workload, env_config  # noqa: E402
from envs.actions import ACTION_MODES  # noqa: E402
from envs.backends import BACKENDS, check_backend  # noqa: E402
from envs.latency_table import check_table_settings, load_table  # noqa: E402
from envs.pruning import load_pruned  # noqa: E402
from envs.pruning_env import ANCHOR_RULES  # noqa: E402
from envs.rewards import REWARDS  # noqa: E402
from models.data import DataSplits, Preprocessing, load_dataset, renormalized  # noqa: E402
from models.errors import DatasetError, RlpruneError  # noqa: E402
from models.training import TrainConfig  # noqa: E402

#: Options a described dataset name (``DataSplits.name``, e.g. ``mnist5k@seed=1,max=1000``) holds.
DATASET_OPTIONS = {"seed": ("seed", int), "max": ("max_samples", int), "size": ("image_size", int)}


def add_data_args(p: argparse.ArgumentParser, model_help: str | None = None) -> None:
    """--model, --dataset and the options that locate and shape the data."""
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model",
        default=default("model"),
        help=model_help or "zoo or torchvision name, or package.module:callable (--list-models)",
    )
    g.add_argument(
        "--dataset",
        default=default("dataset"),
        help="mnist5k, digits, mnist, fashion-mnist, cifar10 or imagefolder:PATH",
    )
    g.add_argument(
        "--data-dir", default=default("data_dir"), help="where torchvision datasets are stored"
    )
    g.add_argument("--download", action="store_true", help="download a torchvision dataset")
    g.add_argument(
        "--max-samples",
        type=int,
        default=default("max_samples"),
        help="stratified subset of the data",
    )
    g.add_argument(
        "--image-size", type=int, default=default("image_size"), help="resize imagefolder images"
    )
    add_data_seed_arg(g)
    g.add_argument(
        "--base-epochs",
        type=int,
        default=default("base_epochs"),
        help=f"base-model training epochs (default {TrainConfig.epochs})",
    )
    g.add_argument(
        "--cache-dir",
        default=default("cache_dir"),
        help="base-model cache ($RLPRUNE_CACHE or ~/.cache/rlprune)",
    )
    g.add_argument("--list-models", action="store_true", help="print the model names and exit")
    g.add_argument("--list-datasets", action="store_true", help="print the datasets and exit")


def add_data_seed_arg(g: argparse._ActionsContainer) -> None:
    """--data-seed: which images go to train, reward and test (not the search's --seed)."""
    g.add_argument(
        "--data-seed",
        type=int,
        default=default("data_seed"),
        help="seed of the data split (which images go to train/reward/test); base models are "
        "cached per split. Not --seed, the search's",
    )


def add_seed_arg(g: argparse._ActionsContainer, what: str) -> None:
    """--seed: the search seed (agent, base-model training, fine-tunes), not the data split's."""
    g.add_argument("--seed", type=int, default=default("seed"), help=what)


def add_weights_arg(p: argparse.ArgumentParser) -> None:
    """--weights: the user's trained state_dict for --model, instead of a base model of rlprune."""
    p.add_argument(
        "--weights",
        type=lambda path: str(Path(path).expanduser().absolute()),
        default=default("weights"),
        metavar="STATE_DICT.pt",
        help="your trained weights for --model (torch.save(model.state_dict(), path)): no base "
        "model is trained; the run records the file's sha256",
    )


def print_weights(work: Workload) -> None:
    """Say which user weights a workload's original is (nothing when it is rlprune's own)."""
    if work.weights:
        path, sha = work.weights["weights"], work.weights["weights_sha256"]
        print(
            f"{work.model_name}: your weights {path} (sha256 {sha[:12]}), test accuracy "
            f"{work.base_info['test_acc']:.4f}; no base model trained"
        )


def add_env_args(p: argparse.ArgumentParser) -> None:
    """Target, reward and pruning options of the environment, and the latency measurement."""
    g = p.add_argument_group("pruning target")
    g.add_argument(
        "--target",
        type=float,
        default=default("target"),
        help="target relative cost: the pruned model's latency (or MACs) / the original's",
    )
    g.add_argument(
        "--cost",
        choices=("latency", "macs"),
        default=default("cost"),
        help="what --target constrains",
    )
    g.add_argument(
        "--reward", choices=sorted(REWARDS), default=default("reward"), help="reward function"
    )
    g.add_argument(
        "--min-pruning-ratio",
        type=float,
        default=default("min_pruning_ratio"),
        help="smallest pruning ratio of a unit",
    )
    g.add_argument(
        "--max-pruning-ratio",
        type=float,
        default=default("max_pruning_ratio"),
        help="largest pruning ratio of a unit",
    )
    g.add_argument(
        "--actions",
        choices=ACTION_MODES,
        default=default("actions"),
        help="how an action becomes a pruning ratio: 'absolute' (AMC: linear onto [min, max]) or "
        "'relative' (0 = the anchor rule's ratio, shifted so the remaining units meet the "
        "target); apply_agent and transfer_study play an agent the way it was trained",
    )
    g.add_argument(
        "--anchor-rule",
        choices=ANCHOR_RULES,
        default=default("anchor_rule"),
        help="the rule, measured at the target, that relative actions are centred on: 'uniform', "
        "'global' (global magnitude pruning) or 'best' (both measured, the higher reward)",
    )
    g.add_argument(
        "--round-to",
        type=int,
        default=default("round_to"),
        help="keep channel counts multiples of N",
    )
    g.add_argument(
        "--importance",
        choices=("l1", "l2"),
        default=default("importance"),
        help="channel importance",
    )
    g.add_argument(
        "--bn-batches",
        type=int,
        default=default("bn_batches"),
        help="batches for BN recalibration",
    )
    g.add_argument(
        "--reconstruct",
        action="store_true",
        help="refit input-pruned layers by AMC's least squares before BN recalibration",
    )
    g.add_argument(
        "--exact-budget",
        action="store_true",
        help="rescale every episode's strategy onto the measured latency budget before it is "
        "scored, as the rules are bisected (about 10 more timings per episode; the agent picks "
        "the shape, the measurement the size)",
    )
    g.add_argument(
        "--features",
        default=None,
        help="comma-separated observation features (default: all of envs.features.ALL_FEATURES; "
        "a subset for ablations)",
    )
    add_seed_arg(g, "search seed: agent, base-model training and fine-tune (not the data split)")
    g = p.add_argument_group("latency")
    g.add_argument(
        "--device",
        default=default("device"),
        help="auto, cpu, cuda or cuda:N: where the network runs",
    )
    add_latency_timing_args(g)
    g.add_argument(
        "--latency-bridge",
        action=argparse.BooleanOptionalAction,
        default=default("latency_bridge"),
        help="time candidates against a model of about the target's latency, whose own ratio to "
        "the unpruned model is timed and pooled, instead of against the unpruned model (faster; "
        "same meaning)",
    )
    add_latency_backend_arg(g)
    g.add_argument(
        "--latency-table",
        type=lambda path: str(Path(path).expanduser().absolute()),
        default=default("latency_table"),
        metavar="FILE",
        help="per-layer latency table measured on another device (scripts/latency_table.py): "
        "the search's latency is its estimate, not timed here; final latencies are timed here",
    )


def add_latency_timing_args(g: argparse._ActionsContainer) -> None:
    """--latency-batch-size, --latency-repeats and --threads, defaulting to LatencyConfig's."""
    g.add_argument(
        "--latency-batch-size",
        type=int,
        default=default("latency_batch_size"),
        help="batch size of latency measurements",
    )
    g.add_argument(
        "--latency-repeats",
        type=int,
        default=default("latency_repeats"),
        help="timed runs per measurement",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=default("threads"),
        help="CPU threads while timing (1 is stable on a shared machine; use your deployment's)",
    )


def add_latency_backend_arg(g: argparse._ActionsContainer) -> None:
    """--latency-backend: the runtime latency is timed in (envs/backends.py)."""
    g.add_argument(
        "--latency-backend",
        choices=BACKENDS,
        default=default("latency_backend"),
        help="runtime models are timed in: eager PyTorch, TorchScript or ONNX Runtime (the "
        "onnx extra); use the one you deploy with",
    )


def add_parallel_args(p: argparse.ArgumentParser) -> None:
    """--envs and --ray-address: episodes in parallel (agents/parallel.py)."""
    g = p.add_argument_group("parallel episodes")
    g.add_argument(
        "--envs",
        type=int,
        default=default("envs"),
        help="episodes evaluated in parallel, each in its own worker process (or Ray actor); "
        "latency is still timed one candidate at a time",
    )
    g.add_argument(
        "--ray-address",
        default=default("ray_address"),
        metavar="ADDR",
        help="evaluate the episodes on Ray actors of the cluster at ADDR ('local': start Ray "
        'here; the ray extra: pip install -e ".[ray]")',
    )


def add_selection_args(g: argparse._ActionsContainer) -> None:
    """The final choice's flags (:func:`agents.finalize.select_final`)."""
    g.add_argument(
        "--select-top-k",
        type=int,
        default=default("select_top_k"),
        help="final choice: re-score this many of the best architectures evaluated, the rules "
        "at the target among them (1: off)",
    )
    g.add_argument(
        "--select-steps",
        type=int,
        default=default("select_steps"),
        help="fine-tune steps of that re-scoring (batch 64, annealed)",
    )


def add_output_args(p: argparse.ArgumentParser) -> None:
    """Fine-tuning of the result and where the run is written."""
    g = p.add_argument_group("output")
    g.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=default("fine_tune_epochs"),
        help="fine-tune epochs after search",
    )
    g.add_argument(
        "--output-dir", default=default("output_dir"), help="parent directory of run directories"
    )
    g.add_argument(
        "--name", default=default("name"), help="run directory name (default: from the settings)"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_writable_dir(path: str | Path, flag: str, shown: str | Path | None = None) -> None:
    """Fail now, not after hours of work, if ``path`` cannot be created or written to.

    Nothing is created: the nearest existing ancestor must be a directory in which a file can
    be made (probed with a temporary file, which also catches read-only file systems).

    Args:
        path: the directory.
        flag: the option that named it, for the message.
        shown: what the message names (default: ``path``).

    Raises:
        RlpruneError: ``path`` or an ancestor is a file, or the directory is not writable.
    """
    shown = shown or path
    path = Path(path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise RlpruneError(f"{flag} {shown}: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise RlpruneError(
            f"{flag} {shown}: cannot write in {existing} ({exc.strerror}); choose another {flag}"
        ) from None


def check_writable_file(path: str | Path, flag: str) -> None:
    """Like :func:`check_writable_dir` for a file to be written at ``path``."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise RlpruneError(f"{flag} {path} is a directory; name a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise RlpruneError(f"{flag} {path} is not writable; choose another {flag}")
    check_writable_dir(path.parent, flag, shown=path)


def new_run_dir(output_dir: str, name: str) -> Path:
    """``output_dir/name``, suffixed -2, -3... when that directory is taken (not claimed: two
    processes may get the same; :func:`claim_run_dir` claims one atomically)."""
    base = Path(output_dir) / name.replace(":", "-").replace("/", "-")
    path, i = base, 1
    while path.exists() and any(path.iterdir()):
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def claim_run_dir(output_dir: str, name: str, config: dict) -> Path:
    """Create the run directory ``output_dir/name`` (-2, -3... when taken) and its config.json.

    The claim is atomic: ``config.json`` is created with ``O_EXCL``, so two runs started at once
    with the same name get two directories. The directory stays locked (:func:`lock_run_dir`)
    while this process runs.

    Raises:
        RlpruneError: The directory cannot be created.
    """
    base = Path(output_dir) / name.replace(":", "-").replace("/", "-")
    for i in range(1, 10_000):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir(parents=True, exist_ok=True)
            if any(p.name != "config.json" for p in path.iterdir()):
                continue  # another run's files
            fd = os.open(path / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        except OSError as exc:
            raise RlpruneError(f"cannot create run directory {path}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(config, indent=2))
        lock_run_dir(path)
        return path
    raise RlpruneError(f"no free run directory name under {base}; pass another --name")


_LOCKS: list[int] = []  # open descriptors of the run directories this process holds


def lock_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on ``run_dir`` until the process ends (also after kill -9).

    Raises:
        RlpruneError: Another process holds it (e.g. the same run resumed twice).
    """
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RlpruneError(
            f"{run_dir} is in use by another rlprune process; wait for it to end"
        ) from None
    _LOCKS.append(fd)


def explicit_flags(argv: list[str] | None) -> set[str]:
    """The ``--flags`` written on the command line (``argv`` or ``sys.argv``)."""
    argv = sys.argv[1:] if argv is None else argv
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def check_settings(settings: dict) -> None:
    """Reject impossible settings of the shared flags before any work is done.

    Raises:
        RlpruneError: One line naming the flag, the value and what it must be.
    """
    positive = ("threads", "latency_batch_size", "latency_repeats", "bn_batches", "round_to")
    positive += ("max_samples", "image_size", "base_epochs", "envs")
    for key in positive:
        value = settings.get(key)
        if value is not None and value < 1:
            raise RlpruneError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    if settings.get("fine_tune_epochs", 0) < 0:
        raise RlpruneError(f"--fine-tune-epochs must be >= 0, got {settings['fine_tune_epochs']}")
    if settings.get("weights"):
        if "," in settings.get("model", ""):
            raise RlpruneError(
                f"--weights fits one model, but --model names {settings['model']}; search one "
                "model at a time with your weights"
            )
        if settings.get("base_epochs"):
            raise RlpruneError(
                "--base-epochs trains a base model, but --weights gives one; drop --base-epochs"
            )
    if "target" in settings and not 0 < settings["target"] < 1:
        raise RlpruneError(
            f"--target must be a fraction of the original in (0, 1), got {settings['target']}"
        )
    if "min_pruning_ratio" in settings:
        env_config(
            settings
        )  # pruning ratios, reward and cost are checked by the env's own settings
    if settings.get("latency_backend"):
        check_backend(settings["latency_backend"])  # its packages are installed
    if settings.get("latency_table"):
        if "," in settings.get("model", ""):
            raise RlpruneError(
                f"--latency-table holds one model's profile, but --model names "
                f"{settings['model']}; search one model at a time with a table"
            )
        table = load_table(settings["latency_table"])
        if (
            "min_pruning_ratio" in settings
        ):  # its settings now; its architecture once the model is built
            check_table_settings(table, settings["latency_table"], env_config(settings).latency)


def load_described(described: str, data_dir: str | None, download: bool) -> DataSplits:
    """Loads a dataset from its described name (``DataSplits.name``, e.g. ``mnist5k@seed=1``).

    A saved pruned model's recipe names its dataset this way.

    Raises:
        DatasetError: Unknown dataset or option.
    """
    name, _, options = described.rpartition("@") if "@" in described else (described, "", "")
    kwargs = {}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key not in DATASET_OPTIONS or not value.lstrip("-").isdigit():
            raise DatasetError(
                f"dataset '{described}': bad option '{option}'; options are "
                f"{', '.join(k + '=N' for k in DATASET_OPTIONS)}, e.g. mnist5k@seed=1,max=1000"
            )
        kwargs[DATASET_OPTIONS[key][0]] = DATASET_OPTIONS[key][1](value)
    return load_dataset(name, data_dir=data_dir, download=download, **kwargs)


def load_pruned_with_data(
    path: Path, dataset: str | None, data_dir: str | None, download: bool, device: object
) -> tuple[object, dict, DataSplits]:
    """A saved pruned model, its recipe, and its dataset (``dataset`` or the recipe's).

    The dataset's images are normalised the way the model's recipe records
    (``recipe["preprocessing"]``), so another split or dataset is fed as the model was trained.
    A file of an older rlprune records no preprocessing nor class names: the dataset's are
    assumed (what the model was trained with when it is the recipe's dataset) and put in the
    returned recipe, so a script that saves the model again records them.

    Raises:
        DatasetError: No dataset known, or its images do not fit the model.
    """
    model, meta = load_pruned(path, device)
    recipe = meta["recipe"]
    dataset = dataset or recipe.get("dataset")
    if not dataset:
        raise DatasetError(f"{path}: the recipe names no dataset; pass --dataset NAME")
    splits = load_described(dataset, data_dir, download)
    if list(splits.input_shape) != list(recipe["input_shape"]):
        raise DatasetError(
            f"dataset '{dataset}' has images {list(splits.input_shape)} but the model was pruned "
            f"for {recipe['input_shape']}; pass the --dataset it was trained on"
        )
    if "preprocessing" not in recipe:
        print(
            f"{path} records no input normalisation (saved by an older rlprune); assuming the "
            f"one of dataset '{splits.name}'"
        )
        recipe = {
            **recipe,
            "class_names": recipe.get("class_names", list(splits.class_names)),
            "preprocessing": splits.preprocessing.to_dict(),
        }
    recorded = Preprocessing.from_dict(recipe["preprocessing"])
    if not recorded.same_input_as(splits.preprocessing):
        print(f"normalising '{splits.name}' with the model's mean {list(recorded.mean)}")
        splits = renormalized(splits, recorded)
    return model, recipe, splits


def run_cli(main: Callable[[], int]) -> None:
    """Run ``main``: an :class:`RlpruneError` or a failed file operation becomes one ``error:``
    line and exit status 2; Ctrl-C one line and status 130."""
    try:
        sys.exit(main())
    except RlpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
