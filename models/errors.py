"""Typed exceptions of rlprune.

Library code raises these with a one-line message that names the problem and the fix; scripts catch
:class:`RlpruneError` and print the message with a non-zero exit instead of a traceback.
"""


class RlpruneError(Exception):
    """Base class of every error rlprune reports to a user."""


class DatasetError(RlpruneError):
    """A dataset is unknown, missing or unreadable."""


class UnknownModelError(RlpruneError):
    """A model name is not in the zoo, torchvision, or an importable ``module:callable``."""


class PruningError(RlpruneError):
    """A model or strategy cannot be pruned (unsupported layer, bad unit name, bad pruning
    ratio)."""


class CheckpointError(RlpruneError):
    """A saved model, agent or run directory is corrupt or does not match what it is loaded into."""


class BudgetError(RlpruneError):
    """A pruning target cannot be met (<= 0, >= 1, or below what maximal pruning reaches)."""


class NoPrunableLayersError(PruningError):
    """A model has no conv/linear layer whose output channels may be removed."""


class InputTooSmallError(PruningError):
    """The example input is too small for the model (its feature maps shrink to nothing)."""
