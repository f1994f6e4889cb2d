"""Inference latency on the target device: robust timing, interleaved comparison, caching.

Timing on a shared machine is noisy (the median of one 50-run pass of the same model varied up to
2.7x between passes here), so comparisons interleave the models being compared and keep robust
statistics: medians, the best of several passes, and candidate runs alternating with the
reference's in :class:`LatencyMeter`.

Two protocols, one per purpose. The search's :class:`LatencyMeter` times only until a candidate's
ratio to the reference is known to ``rel_tol`` (a sequential stopping rule on the interleaved
pairs), because it runs every episode. The final comparison (:func:`compare_latency`) always runs
every repeat of every pass, because its numbers are the ones reported.

Both time the model in the runtime ``LatencyConfig.backend`` names (:mod:`envs.backends`: eager
PyTorch, TorchScript or ONNX Runtime); compiling for it is done before the timed runs and cached.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from envs.backends import BACKENDS, Backend, Forward
from envs.units import eval_mode
from models.errors import RlpruneError


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is timed.

    Attributes:
        device: Where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``); the model must be there.
        batch_size: Samples per forward pass (16: the product default of every script).
        warmup: Untimed forward passes before timing (per model and pass).
        repeats: Timed forward passes.
        threads: ``torch.set_num_threads`` during measurement (restored after); None keeps it.
            1 is stable on a shared machine; use your deployment's.
        rel_tol: :meth:`LatencyMeter.relative_latency` stops once the candidate/reference ratio
            is known to within this relative 95% half-width (0.02: +-2%); ``repeats`` pairs at most.
            None times all ``repeats``. Ignored by :func:`measure_latency` and
            :func:`compare_latency`, whose numbers are reported and so always get every repeat.
        min_repeats: fewest interleaved pairs before the stopping rule may stop (the spread of
            fewer is itself too noisy to trust).
        pause_ms: untimed sleep before every timed run. On a CPU shared with busier processes the
            scheduler preempts a process that never sleeps every few ms, inside whichever run is
            going on, the longer model's more often: here (2 cores, load 7) a 2 ms model timed at
            6 ms and its 0.45 ratio to a pruned copy at 0.14-0.31; with 0.5 ms pauses, 2.2 ms
            and 0.44-0.47.
        backend: The runtime the model is timed in (:data:`envs.backends.BACKENDS`): ``"torch"``
            (eager), ``"torchscript"`` or ``"onnxruntime"``.
    """

    device: str = "cpu"
    batch_size: int = 16
    warmup: int = 3
    repeats: int = 20
    threads: int | None = 1
    rel_tol: float | None = 0.02
    min_repeats: int = 5
    pause_ms: float = 0.5
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise RlpruneError(
                f"unknown latency backend '{self.backend}'; choose {', '.join(BACKENDS)}"
            )


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of repeated forward passes, milliseconds per batch.

    Attributes:
        median_ms: Median time.
        p25_ms: 25th percentile.
        p75_ms: 75th percentile.
        min_ms: Fastest run.
        n: Number of timed runs.
    """

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    n: int

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median, (p75 - p25) / median."""
        return (self.p75_ms - self.p25_ms) / self.median_ms if self.median_ms > 0 else 0.0

    @classmethod
    def from_times(cls, times_ms: Sequence[float]) -> LatencyStats:
        """Statistics of run times in ms (at least one)."""
        ordered = sorted(times_ms)
        if len(ordered) == 1:
            q25 = q75 = ordered[0]
        else:
            q25, _, q75 = statistics.quantiles(ordered, n=4, method="inclusive")
        return cls(statistics.median(ordered), q25, q75, ordered[0], len(ordered))


def reporting_config(config: LatencyConfig, device: Any = None) -> LatencyConfig:
    """The protocol of every reported latency: ``config`` on ``device`` with >= 30 timed runs.

    Reported numbers (:func:`compare_latency`) time every repeat; the search's adaptive stopping
    rule (``rel_tol``) does not apply to them.
    """
    device = config.device if device is None else str(device)
    return replace(config, device=device, repeats=max(config.repeats, 30))


def make_backend(config: LatencyConfig, cache_size: int = 8) -> Backend:
    """The :class:`envs.backends.Backend` of ``config`` (runtime, device, threads)."""
    return Backend(config.backend, config.device, config.threads, cache_size=cache_size)


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    config: LatencyConfig = LatencyConfig(),
    backend: Backend | None = None,
) -> LatencyStats:
    """Times forward passes of ``model`` on a random batch ``[batch_size, *input_shape]``.

    The model runs in eval mode under ``torch.inference_mode`` (its mode is restored after), in
    ``config.backend``'s runtime (compiled by ``backend``, a new one if None, before timing);
    CUDA is synchronised around every timed run.
    """
    backend = backend or make_backend(config)
    with _timing(config):
        x = _batch(input_shape, config)
        with eval_mode(model):
            run = _runner(backend, model, x, config)
            for _ in range(config.warmup):
                run()
            return LatencyStats.from_times([run() for _ in range(max(config.repeats, 1))])


def compare_latency(
    models: Mapping[str, nn.Module],
    input_shape: tuple[int, int, int],
    config: LatencyConfig = LatencyConfig(),
    passes: int = 3,
) -> dict[str, LatencyStats]:
    """Latency of several models measured interleaved, robust to machine-wide slowdowns.

    Each pass measures every model in turn, starting one model later than the previous pass;
    per model the pass with the lowest median is kept (a slowdown only ever adds time). Each
    model is compiled for ``config.backend`` once, before its first pass.

    Returns:
        Stats per model name, in the order of ``models``.
    """
    names = list(models)
    backend = make_backend(config, cache_size=len(names))
    best: dict[str, LatencyStats] = {}
    for p in range(max(passes, 1)):
        shift = p % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            stats = measure_latency(models[name], input_shape, config, backend)
            if name not in best or stats.median_ms < best[name].median_ms:
                best[name] = stats
    return {name: best[name] for name in names}


def shape_signature(model: nn.Module) -> tuple:
    """Hashable architecture fingerprint: module classes, parameter and buffer shapes, in order.

    Two pruned copies of the same model with the same kept channels have equal signatures.
    """
    classes = tuple(type(m).__name__ for m in model.modules())
    params = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    buffers = tuple((n, tuple(b.shape)) for n, b in model.named_buffers())
    return classes, params, buffers


#: Standard error of a median over that of a mean, for normal samples (sqrt(pi / 2)).
_MEDIAN_SE = 1.2533
#: MAD to standard deviation, for normal samples.
_MAD_SD = 1.4826
#: Two-sided 95% normal quantile.
_Z95 = 1.96


def paired_relative_latency(
    candidate_ms: Sequence[float], reference_ms: Sequence[float]
) -> tuple[float, float]:
    """Relative latency from interleaved runs, and how well it is known.

    Run ``i`` of the candidate and run ``i`` of the reference ran back to back, so they saw the same
    machine load; their log-ratio ``d_i`` is far less noisy than either time. The ratio is
    ``exp(median(d))``; its relative 95% half-width is ``exp(z * se) - 1`` with the median's
    standard error ``se = 1.2533 * 1.4826 * MAD(d) / sqrt(n)`` (robust to a few disturbed runs).

    Args:
        candidate_ms: candidate run times, ms.
        reference_ms: reference run times, ms, one per candidate run.

    Returns:
        (ratio, relative half-width); the half-width is ``inf`` for a single pair.
    """
    logs = [math.log(c / r) for c, r in zip(candidate_ms, reference_ms, strict=True)]
    center = statistics.median(logs)
    if len(logs) < 2:
        return math.exp(center), math.inf
    mad = statistics.median(abs(d - center) for d in logs)
    se = _MEDIAN_SE * _MAD_SD * mad / math.sqrt(len(logs))
    return math.exp(center), math.expm1(_Z95 * se)


#: :meth:`LatencyMeter.set_bridge`'s defaults: pairs timed when a bridge is set, measurements
#: between re-timings, pairs per re-timing.
BRIDGE_PAIRS, BRIDGE_EVERY, BRIDGE_RETIME_PAIRS = 40, 25, 10


class LatencyMeter:
    """Relative latency of candidates to a fixed reference model, cached by shape signature.

    Args:
        reference: the model every candidate is compared with.
        input_shape: one sample's shape, ``(C, H, W)``.
        config: timing settings; ``rel_tol`` and ``min_repeats`` drive the stopping rule.
        threshold: the relative latency that decides something (the target plus its tolerance):
            timing also stops once it is known to be below or above it, as more precision would not
            change the decision. None: only ``rel_tol`` stops.
        store: measurements kept beyond this meter (:class:`envs.latency_store.MeasurementStore`):
            asked before timing, given what was timed, so meters sharing it agree. None: only
            this meter's memory.

    **Bridge** (:meth:`set_bridge`): a search's candidates sit near its target, often half the
    reference's latency or less, so timing the reference in every pair costs more than timing
    the candidate. Once a bridge (a model of about the candidates' latency) is set, candidates are
    paired with the bridge instead, and their ratio to the reference is ``candidate / bridge``
    times ``bridge / reference``. The second factor is timed interleaved too: ``bridge_pairs``
    pairs when the bridge is set and ``bridge_retime_pairs`` more after every ``bridge_every``
    measurements, all of them pooled (the median of every pair's log-ratio), so it gets more
    precise over a search and follows a slow drift. Pairing stays interleaved (the machine's load
    cancels as before), only against a model as fast as the candidate.

    Attributes:
        reference_stats: Latency of the reference, measured at construction.
        bridge: the model candidates are paired with (None: the reference).
        bridge_ratio: the bridge's latency relative to the reference (1.0 without a bridge).
        hits: Calls of :meth:`relative_latency` answered from the cache (or the store).
        misses: Calls that measured.
        last_times: ms of each timed run of the last call that measured, ``(candidate runs,
            partner runs)`` in pair order (the partner: the reference, or the bridge; warm-ups
            excluded); for profiling (``scripts/profile_search.py``). None before the first.
        backend: Compiles the models for ``config.backend`` (its ``exports`` and ``compile_s``
            count the cost); a cache hit compiles nothing.
    """

    def __init__(
        self,
        reference: nn.Module,
        input_shape: tuple[int, int, int],
        config: LatencyConfig = LatencyConfig(),
        threshold: float | None = None,
        store: Any = None,
    ) -> None:
        self.reference = reference
        self.input_shape = input_shape
        self.config = config
        self.threshold = threshold
        self.store = store
        self.backend = make_backend(config)
        self.reference_stats = measure_latency(reference, input_shape, config, self.backend)
        self.hits = 0
        self.misses = 0
        self.last_times: tuple[list[float], list[float]] | None = None
        self._cache: dict[tuple, tuple[float, LatencyStats]] = {}
        self.bridge: nn.Module | None = None
        self.bridge_ratio = 1.0
        self._bridge_logs: list[float] = []
        self._since_bridge = 0
        self._bridge_every, self._bridge_retime_pairs = BRIDGE_EVERY, BRIDGE_RETIME_PAIRS

    def set_bridge(
        self,
        bridge: nn.Module | None,
        bridge_pairs: int = BRIDGE_PAIRS,
        bridge_every: int = BRIDGE_EVERY,
        bridge_retime_pairs: int = BRIDGE_RETIME_PAIRS,
    ) -> None:
        """Pair later candidates with ``bridge`` instead of the reference (see the class doc).

        Args:
            bridge: a model of about the candidates' latency; None: back to the reference.
            bridge_pairs: interleaved pairs (bridge, reference) timed now.
            bridge_every: measurements after which ``bridge_retime_pairs`` more pairs are timed
                and pooled with the earlier ones.
            bridge_retime_pairs: pairs per re-timing.
        """
        if bridge_pairs < 2 or bridge_every < 1 or bridge_retime_pairs < 1:
            raise RlpruneError(
                "a latency bridge needs bridge_pairs >= 2, bridge_every >= 1 and "
                "bridge_retime_pairs >= 1"
            )
        self.bridge = bridge
        self.bridge_ratio = 1.0
        self._bridge_logs = []
        self._since_bridge = 0
        self._bridge_every, self._bridge_retime_pairs = bridge_every, bridge_retime_pairs
        if bridge is not None:
            self._time_bridge(bridge_pairs)

    def _time_bridge(self, pairs: int) -> None:
        """Times ``pairs`` more interleaved pairs of the bridge and the reference, pooled."""
        assert self.bridge is not None
        bridge_ms, reference_ms = self._interleaved(
            self.bridge, self.reference, pairs, warmup=1, known=None
        )
        self._bridge_logs += [math.log(b / r) for b, r in zip(bridge_ms, reference_ms, strict=True)]
        self.bridge_ratio = math.exp(statistics.median(self._bridge_logs))
        self._since_bridge = 0

    def relative_latency(self, model: nn.Module, fresh: bool = False) -> tuple[float, LatencyStats]:
        """(candidate / reference latency, candidate stats), timed interleaved.

        Candidate and reference runs alternate (the order flips every repeat), so both see the same
        machine load; the ratio (:func:`paired_relative_latency`) is far more stable than either
        latency alone. Timing stops as soon as the ratio is known to ``config.rel_tol`` or known to
        lie on one side of ``threshold`` (after at least ``config.min_repeats`` pairs, at most
        ``config.repeats``). The reference, timed at every call, gets one warm-up run; the candidate
        ``config.warmup``. ``fresh``: time it even when the architecture was timed before; the
        new timing replaces the old one (here and in the store). With a bridge
        (:meth:`set_bridge`) the candidate is paired with the bridge and its ratio scaled by
        ``bridge_ratio``; ``last_times`` then holds the bridge's runs as the second list.
        """
        key = shape_signature(model)
        if key in self._cache and not fresh:
            self.hits += 1
            return self._cache[key]
        stored = self.store.get(model) if self.store is not None and not fresh else None
        if stored is not None:
            self.hits += 1
            self._cache[key] = stored
            return stored
        self.misses += 1
        cfg = self.config
        partner = self.reference if self.bridge is None else self.bridge
        times = self._interleaved(model, partner, cfg.repeats, cfg.warmup, self._known)
        self.last_times = times
        relative, _ = paired_relative_latency(*times)
        result = (relative * self.bridge_ratio, LatencyStats.from_times(times[0]))
        self._cache[key] = result
        if self.store is not None:
            self.store.put(model, *result)
        if self.bridge is not None:
            self._since_bridge += 1
            if self._since_bridge >= self._bridge_every:
                self._time_bridge(self._bridge_retime_pairs)
        return result

    def _interleaved(
        self,
        model: nn.Module,
        partner: nn.Module,
        repeats: int,
        warmup: int,
        known: Callable[[tuple[list[float], list[float]], int], bool] | None,
    ) -> tuple[list[float], list[float]]:
        """Run times (ms) of ``model`` and ``partner`` in interleaved pairs (the order flips every
        pair), until ``known(times, pairs)`` or ``repeats`` pairs; ``warmup`` untimed runs of
        ``model`` first and one of ``partner``."""
        cfg = self.config
        with _timing(cfg):
            x = _batch(self.input_shape, cfg)
            with eval_mode(model), eval_mode(partner):
                runs = (
                    _runner(self.backend, model, x, cfg),
                    _runner(self.backend, partner, x, cfg),
                )
                for _ in range(warmup):
                    runs[0]()
                runs[1]()
                times: tuple[list[float], list[float]] = ([], [])
                for i in range(max(repeats, 1)):
                    for j in (0, 1) if i % 2 == 0 else (1, 0):
                        times[j].append(runs[j]())
                    if known is not None and known(times, i + 1):
                        break
        return times

    def _known(self, times: tuple[list[float], list[float]], pairs: int) -> bool:
        """Whether the ratio of ``times`` (candidate, partner) is known well enough: to
        ``rel_tol``, or to lie on one side of the threshold (in the partner's units: the
        threshold over ``bridge_ratio``)."""
        cfg = self.config
        if cfg.rel_tol is None or pairs < max(cfg.min_repeats, 2):
            return False
        relative, half_width = paired_relative_latency(*times)
        if half_width <= cfg.rel_tol:
            return True
        if self.threshold is None:
            return False
        t = self.threshold / self.bridge_ratio
        return relative * (1 + half_width) < t or relative > t * (1 + half_width)


def profile_layers(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    layer_names: Sequence[str],
    config: LatencyConfig = LatencyConfig(),
) -> tuple[dict[str, float], float]:
    """Per-layer latency table, for :func:`envs.units.estimate_cost` with ``per_layer``.

    Each named layer is timed between a forward pre-hook and a forward hook, and so is the whole
    model in the same run. Per layer: the median over ``repeats`` runs of its time in a run. The
    overhead, the time of everything the pruning does not shrink, is the median over runs of the
    run's total minus its layers' times (clipped at 0): both come from the same run, so a run that
    the machine slowed down does not leak into the overhead.

    Hooks only fire in eager PyTorch: a compiled runtime (TorchScript, ONNX Runtime) runs one
    fused graph without module boundaries. For ``config.backend`` other than ``"torch"`` the
    eager profile is therefore scaled so that it sums to the backend's whole-model median (timed
    with the same settings): the backend sets the total, eager PyTorch how it divides among the
    layers. The search's measured episodes then calibrate the estimate's slope in the backend
    (see :meth:`envs.pruning_env.ChannelPruningEnv.latency_estimate`).

    Returns:
        (ms per layer name, overhead ms).

    Raises:
        RlpruneError: A name is not a submodule of ``model``.
    """
    modules = dict(model.named_modules())
    missing = [n for n in layer_names if n not in modules]
    if missing:
        raise RlpruneError(f"cannot profile {missing[:3]}: not layers of {type(model).__name__}")
    cuda = torch.device(config.device).type == "cuda"
    runs: list[dict[str, float]] = []  # per run: ms per layer name, and the total under None
    starts: dict[str | None, float] = {}

    def now() -> float:
        if cuda:
            torch.cuda.synchronize(config.device)
        return time.perf_counter()

    def before(name: str | None) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if name is None:
                runs.append(dict.fromkeys(layer_names, 0.0))
            starts[name] = now()

        return hook

    def after(name: str | None) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            runs[-1][name] = runs[-1].get(name, 0.0) + (now() - starts[name]) * 1e3

        return hook

    handles = [model.register_forward_pre_hook(before(None))]
    for name in layer_names:
        handles.append(modules[name].register_forward_pre_hook(before(name)))
        handles.append(modules[name].register_forward_hook(after(name)))
    handles.append(model.register_forward_hook(after(None)))  # last: after the layers' hooks
    eager = replace(config, backend="torch")
    try:
        measure_latency(model, input_shape, eager)
    finally:
        for handle in handles:
            handle.remove()
    timed = runs[config.warmup :] or runs  # the warm-up runs are recorded too; drop them
    per_layer = {n: statistics.median(run[n] for run in timed) for n in layer_names}
    rest = statistics.median(run[None] - sum(run[n] for n in layer_names) for run in timed)
    rest = max(0.0, rest)
    if config.backend == "torch":
        return per_layer, rest
    scale = measure_latency(model, input_shape, config).median_ms / (sum(per_layer.values()) + rest)
    return {n: ms * scale for n, ms in per_layer.items()}, rest * scale


@contextmanager
def _timing(config: LatencyConfig) -> Iterator[None]:
    """Applies ``config.threads`` for the duration of a measurement."""
    previous = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _batch(input_shape: Sequence[int], config: LatencyConfig) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(config.batch_size, *input_shape, generator=generator)
    return x.to(config.device)


def _runner(
    backend: Backend, model: nn.Module, x: torch.Tensor, config: LatencyConfig
) -> Callable[[], float]:
    """:func:`_timer` of ``model`` compiled by ``backend`` (compiling is not timed)."""
    where = next(iter(model.parameters()), x).device
    if where.type != x.device.type:
        raise RlpruneError(
            f"model is on {where} but latency is measured on {config.device}; move it with "
            f".to('{config.device}')"
        )
    with torch.no_grad():
        forward = backend.compile(model, x)
    return _timer(forward, x, config.device, config.pause_ms)


def _timer(
    model: Forward, x: torch.Tensor, device: str, pause_ms: float = 0.0
) -> Callable[[], float]:
    """A function that runs one forward pass of ``model`` on ``x`` and returns its time in ms.

    It sleeps ``pause_ms`` first, untimed (see :attr:`LatencyConfig.pause_ms`).
    """
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)

    def run() -> float:
        if pause_ms > 0:
            time.sleep(pause_ms / 1e3)
        with torch.inference_mode():
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(device)
            return (time.perf_counter() - start) * 1e3

    return run
