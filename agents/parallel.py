"""Episodes in parallel: copies of the pruning env in worker processes or on Ray actors.

An episode's cost is its end: pruning, BatchNorm recalibration, the accuracy on the reward split
and the latency. :func:`make_vec_env` runs N copies of one :class:`~envs.pruning_env.
ChannelPruningEnv` as an SB3 ``VecEnv`` that the agent of :func:`agents.ddpg.make_agent` steps
together (a rollout is one episode of each copy):

* on this machine, in N worker processes (SB3's ``SubprocVecEnv``);
* with ``ray_address``, on N Ray actors of a cluster (``"local"`` starts one on this machine;
  the ``ray`` extra: ``pip install -e ".[ray]"``).

Latency stays clean: candidates are timed one at a time on the target device, never
concurrently. The worker processes share a lock around every timing (:class:`LockedLatency`);
on Ray, the env actors send their candidates to one timing actor (:class:`LatencyTimer`), placed on
the node that offers the device's custom resource (:func:`timer_resource`), which runs one call at
a time. Other workers' accuracy evaluations can still share the CPU with a timing.

Each worker gets a copy of the env as it is (network, data, latency profile and calibration, and
result cache), so for a deterministic latency source its episodes are those of the env itself.
The workers' results are brought back into the env's cache with :func:`collect_results`, where the
final selection (:mod:`agents.selection`) reads them.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv
from torch import nn

from envs.pruning_env import ChannelPruningEnv, LatencySource
from models.errors import RlpruneError


def make_vec_env(env: ChannelPruningEnv, n_envs: int, *, ray_address: str | None = None) -> VecEnv:
    """``n_envs`` copies of ``env`` stepping in parallel, their timings never concurrent.

    Args:
        env: the env to copy (it is not stepped; its copies are).
        n_envs: number of copies (episodes at a time).
        ray_address: None: worker processes on this machine; ``"local"``: a Ray instance started
            here; else the address of a running Ray cluster (``ray start --head``) one of whose
            nodes offers the resource ``timer_resource(env.device)``.

    Raises:
        RlpruneError: ``n_envs`` < 1, Ray is not installed, the cluster cannot be reached or has
            no node for the device's timings.
    """
    if n_envs < 1:
        raise RlpruneError(f"--envs must be >= 1, got {n_envs}")
    threads = max(1, (os.cpu_count() or 1) // n_envs)  # the workers share the cores
    for one in getattr(env, "envs", [env]):  # one measured anchor, shared by every copy
        one.ensure_anchor()
    if ray_address is not None:
        return RayVecEnv(env, n_envs, ray_address, threads)
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    if method == "forkserver":  # the workers fork with torch, SB3 and rlprune imported once
        mp.set_forkserver_preload([__name__])
    latency = LockedLatency(env.latency, mp.get_context(method).Lock())
    worker = functools.partial(worker_env, env, latency, threads)
    return SubprocVecEnv([worker] * n_envs, start_method=method)


def worker_env(env: ChannelPruningEnv, latency: LatencySource, threads: int) -> gym.Env:
    """A worker's copy of ``env``: timed through ``latency``, evaluated on ``threads`` threads,
    with SB3's episode statistics (``Monitor``, as SB3 wraps a single env).

    The worker ignores Ctrl-C: the main process handles it (saves the search) and closes the
    workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    env.latency = latency
    return Monitor(env)


def collect_results(vec_env: VecEnv, env: ChannelPruningEnv) -> int:
    """Put every architecture the workers evaluated into ``env``'s result cache.

    Returns the number of architectures new to ``env``.
    """
    return sum(env.add_results(results) for results in vec_env.env_method("evaluated_results"))


class LockedLatency:
    """A latency source whose timings hold a lock shared by the worker processes.

    Args:
        source: the env's latency source (measured, a table, or a test's deterministic one).
        lock: a ``multiprocessing`` lock of the workers' start method.
    """

    def __init__(self, source: LatencySource, lock: Any) -> None:
        self.source, self.lock = source, lock

    def profile(self, layer_names: Sequence[str]) -> tuple[dict[str, float], float]:
        with self.lock:
            return self.source.profile(layer_names)

    def relative_latency(self, model: nn.Module, fresh: bool = False) -> tuple[float, float]:
        with self.lock:
            return self.source.relative_latency(model, fresh=fresh)

    @property
    def compile_s(self) -> float:
        """Seconds the source spent compiling models for its backend."""
        return float(getattr(self.source, "compile_s", 0.0))


# ------------------------------------------------------------------------------------------ Ray
def require_ray(what: str) -> ModuleType:
    """The ``ray`` module, or a one-line :class:`RlpruneError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise RlpruneError(
            f'{what} needs Ray, which is not installed; pip install -e ".[ray]" (or pip install '
            "ray)"
        ) from None
    return ray


def timer_resource(device: str | torch.device) -> str:
    """The custom Ray resource of the node that times for ``device`` (``cuda:0`` ->
    ``rlprune_timer_cuda_0``); a cluster offers it on that node: ``ray start ... --resources
    '{"rlprune_timer_cpu": 1}'``."""
    return "rlprune_timer_" + re.sub(r"[^0-9A-Za-z]", "_", str(device))


def connect_ray(address: str, n_envs: int, resource: str) -> tuple[ModuleType, bool]:
    """Join the Ray cluster at ``address`` (``"local"``: start one here); return ray and whether
    this call started it.

    Raises:
        RlpruneError: Ray is missing, the cluster cannot be reached, or no node offers
            ``resource``.
    """
    ray = require_ray("--ray-address")
    if ray.is_initialized():
        started = False
    elif address == "local":
        # Workers on this machine import what this process imports (a checkout, test modules).
        path = os.pathsep.join(p for p in sys.path if p)
        ray.init(
            num_cpus=n_envs,
            resources={resource: 1},
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
        started = True
    else:
        check_reachable(address)
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises several kinds; all mean the same
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise RlpruneError(
                f"--ray-address {address}: cannot join a Ray cluster there ({first}); start one "
                "with `ray start --head` and pass its address, or pass --ray-address local"
            ) from None
        started = True
    if ray.cluster_resources().get(resource, 0) < 1:
        if started:
            ray.shutdown()
        raise RlpruneError(
            f"no node of the Ray cluster at {address} offers the resource '{resource}' that pins "
            f"latency timing to the device; start that device's node with: ray start --address "
            f"{address} --resources '{{\"{resource}\": 1}}'"
        )
    return ray, started


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once if nothing listens at a ``host:port`` address (Ray itself retries for
    minutes); ``auto`` and other forms are left to Ray.

    Raises:
        RlpruneError: The connection is refused or times out.
    """
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)", address)
    if match is None:
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout_s).close()
    except OSError as exc:
        raise RlpruneError(
            f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); start the "
            "cluster with `ray start --head` and pass its address, or pass --ray-address local"
        ) from None


class LatencyTimer:
    """Ray actor that times candidates on its node's device, one call at a time."""

    def __init__(self, source: LatencySource) -> None:
        self.source = source

    def profile(self, layer_names: Sequence[str]) -> tuple[dict[str, float], float]:
        return self.source.profile(layer_names)

    def relative_latency(self, model: nn.Module, fresh: bool = False) -> tuple[float, float]:
        return self.source.relative_latency(model, fresh=fresh)


class RemoteLatency:
    """Latency source of an env on a Ray actor: a :class:`LatencyTimer` times its candidates."""

    def __init__(self, timer: Any) -> None:
        self.timer = timer

    def profile(self, layer_names: Sequence[str]) -> tuple[dict[str, float], float]:
        return _ray().get(self.timer.profile.remote(list(layer_names)))

    def relative_latency(self, model: nn.Module, fresh: bool = False) -> tuple[float, float]:
        return _ray().get(self.timer.relative_latency.remote(model, fresh))


def _ray() -> ModuleType:
    import ray

    return ray


class EnvWorker:
    """Ray actor holding one env, stepped as SB3's ``SubprocVecEnv`` steps its workers' envs
    (reset at the end of an episode, the last observation in ``info["terminal_observation"]``)."""

    def __init__(self, make_env: Callable[[], gym.Env]) -> None:
        self.env = make_env()

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, dict, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        done, reset_info = terminated or truncated, {}
        info["TimeLimit.truncated"] = truncated and not terminated
        if done:
            info["terminal_observation"] = obs
            obs, reset_info = self.env.reset()
        return obs, reward, done, info, reset_info

    def reset(self, seed: int | None, options: dict | None) -> tuple[Any, dict]:
        return self.env.reset(seed=seed, **({"options": options} if options else {}))

    def spaces(self) -> tuple[gym.Space, gym.Space]:
        return self.env.observation_space, self.env.action_space

    def get_attr(self, name: str) -> Any:
        return self.env.get_wrapper_attr(name)

    def set_attr(self, name: str, value: Any) -> None:
        self.env.set_wrapper_attr(name, value)

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def is_wrapped(self, wrapper_class: type[gym.Wrapper]) -> bool:
        return is_wrapped(self.env, wrapper_class)


class RayVecEnv(VecEnv):
    """N copies of an env on Ray actors (one CPU each), timed by one :class:`LatencyTimer` on the
    node that offers ``timer_resource(env.device)``; see :func:`make_vec_env`."""

    def __init__(self, env: ChannelPruningEnv, n_envs: int, address: str, threads: int) -> None:
        resource = timer_resource(env.device)
        self.ray, self.started = connect_ray(address, n_envs, resource)
        remote = self.ray.remote
        self.timer = remote(LatencyTimer).options(num_cpus=0, resources={resource: 1})
        self.timer = self.timer.remote(env.latency)
        make_env = functools.partial(worker_env, env, RemoteLatency(self.timer), threads)
        shared = self.ray.put(make_env)  # the env (network, data) is shipped once
        self.workers = [remote(EnvWorker).options(num_cpus=1).remote(shared) for _ in range(n_envs)]
        self._steps: list[Any] = []
        observation_space, action_space = self.ray.get(self.workers[0].spaces.remote())
        super().__init__(n_envs, observation_space, action_space)

    def _get(self, refs: list[Any]) -> list[Any]:
        return self.ray.get(refs)

    def _targets(self, indices: Any) -> list[Any]:
        return [self.workers[i] for i in self._get_indices(indices)]

    def reset(self) -> np.ndarray:
        refs = [
            w.reset.remote(self._seeds[i], self._options[i]) for i, w in enumerate(self.workers)
        ]
        obs, self.reset_infos = zip(*self._get(refs), strict=True)
        self._reset_seeds()
        self._reset_options()
        return np.stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._steps = [w.step.remote(a) for w, a in zip(self.workers, actions, strict=True)]

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        obs, rewards, dones, infos, self.reset_infos = zip(*self._get(self._steps), strict=True)
        return np.stack(obs), np.stack(rewards), np.stack(dones), list(infos)

    def close(self) -> None:
        for actor in [*self.workers, self.timer]:
            self.ray.kill(actor)
        self.workers = []
        if self.started:
            self.ray.shutdown()

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return self._get([w.get_attr.remote(attr_name) for w in self._targets(indices)])

    def has_attr(self, attr_name: str) -> bool:
        try:
            self.get_attr(attr_name)
        except AttributeError:
            return False
        return True

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        self._get([w.set_attr.remote(attr_name, value) for w in self._targets(indices)])

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        refs = [
            w.call.remote(method_name, method_args, method_kwargs) for w in self._targets(indices)
        ]
        return self._get(refs)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        return self._get([w.is_wrapped.remote(wrapper_class) for w in self._targets(indices)])
