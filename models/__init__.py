"""The model zoo: Pinnability baselines and the neural ranker with pluggable sequence modules.

Names only here (importing this package does not import torch; the names themselves are the
platform's, in ``homefeed.schema``); see ``models.zoo`` for classes.
"""

from homefeed.schema import BASELINE_NAMES, MODEL_NAMES, SEQUENCE_MODULE_NAMES

__all__ = ["BASELINE_NAMES", "MODEL_NAMES", "SEQUENCE_MODULE_NAMES"]
