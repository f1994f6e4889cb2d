"""Ship a trained agent with rlprune: copy a finished run's agent.zip into agents/pretrained/ and
record it (checksum, observation features, training networks and dataset, the command) in the
index; by default it becomes the agent apply_agent.py and transfer_study.py use without --agent.

    python scripts/ship_agent.py --run runs/RUN --name multi6-rel
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common

from agents.pretrained import AGENT_DIR, ship_agent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--run", type=Path, required=True, help="directory of a finished train_agent.py run"
    )
    p.add_argument("--name", required=True, help="name of the shipped agent (file <name>.zip)")
    p.add_argument("--to", type=Path, default=AGENT_DIR, help="shipped-agents folder")
    p.add_argument(
        "--no-default", action="store_true", help="ship it without making it the default agent"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    entry = ship_agent(args.run, args.name, default=not args.no_default, root=args.to)
    print(
        f"shipped agent {entry['name']} (trained on {','.join(entry['models'])} / "
        f"{entry['dataset']}, {entry['episodes']} episodes) -> {args.to / entry['file']} "
        f"(sha256 {entry['sha256'][:16]}...){' as the default' if entry['default'] else ''}"
    )
    return 0


if __name__ == "__main__":
    common.run_cli(main)
