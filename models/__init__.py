"""The model zoo: Pinnability baselines and the neural ranker with pluggable sequence modules.

Names only here (importing this package does not import torch); see ``models.zoo`` for classes.
"""

BASELINE_NAMES = ("lr", "gbdt")
SEQUENCE_MODULE_NAMES = ("none", "avgpool", "cnn", "rnn", "lstm", "transformer", "transact_v10", "transact_v11")
MODEL_NAMES = BASELINE_NAMES + SEQUENCE_MODULE_NAMES
