"""Zero-shot probe (13th session): the shipped agent's deterministic policy with its relative
actions scaled by alpha (alpha 0: the anchor rule; 1: the policy as trained), on a per-layer
latency table (noise-free cost), mnist5k, target 0.5. One episode per alpha, reward split.

    python docs/transfer/s13_zero_shot_probe/probe.py NETWORK TABLE.json AGENT.zip

A study script, not part of the product: it reads transfer_study.py's flags to build the same
environment as `transfer_study.py --zero-shot-only --latency-table TABLE.json`.
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import transfer_study  # noqa: E402

from agents.ddpg import agent_env_settings, load_agent  # noqa: E402
from agents.workload import build_workload, load_splits  # noqa: E402

net, table, agent_path = sys.argv[1:4]
args = transfer_study.parse_args(
    [
        "--agent",
        agent_path,
        "--models",
        net,
        "--dataset",
        "mnist5k",
        "--zero-shot-only",
        "--latency-table",
        table,
        "--no-progress",
    ]
)
args.features, args.actions = agent_env_settings(args.agent, args.features, args.actions)
assert args.actions == "relative", "the probe scales relative actions (0 = the anchor rule)"
torch.manual_seed(0)
splits = load_splits(vars(args))
env = build_workload(net, splits, vars(args), torch.device("cpu"), progress=False).env
agent = load_agent(args.agent, env)
print(f"{net}: {env.num_units} units")
print(
    "| alpha | reward-split acc | table latency | units at >= 0.75 | units at <= 0.05 "
    "| pruning ratios |"
)
print("|---|---|---|---|---|---|")
for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
    obs, _ = env.reset(seed=0)
    while True:
        action, _ = agent.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action * alpha)
        if terminated or truncated:
            break
    ratios = [info["strategy"][u.name] for u in env.units]
    print(
        f"| {alpha:.2f} | {info['accuracy']:.3f} | {info['relative_latency']:.3f} | "
        f"{sum(r >= 0.75 for r in ratios)} | {sum(r <= 0.05 for r in ratios)} | "
        + " ".join(f"{r:.2f}" for r in ratios)
        + " |",
        flush=True,
    )
