"""Gymnasium environment, pruning engine and latency measurement of rlprune."""

import gymnasium

ENV_ID = "rlprune/ChannelPruning-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.pruning_env:ChannelPruningEnv")
