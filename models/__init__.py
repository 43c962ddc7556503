"""The model zoo: Pinnability baselines and the neural ranker with pluggable sequence modules.

Each model is one entry in ``models.catalog`` (name, builder, ranker overrides, knobs); importing
this package does not import torch. See ``models.zoo`` for loading and scoring trained models.
"""

from models.catalog import BASELINE_NAMES, MODEL_NAMES, SEQUENCE_MODULE_NAMES

__all__ = ["BASELINE_NAMES", "MODEL_NAMES", "SEQUENCE_MODULE_NAMES"]
