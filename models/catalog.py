"""Every model homefeed trains, one entry each: its name, what builds it, what the ranker does
differently for it, and the training knobs it reads (their defaults live once, in
``homefeed.config.TrainConfig``).

Light on purpose (no torch at import): the config checks model names against it and the DAG
form lists them while Airflow parses. ``homefeed.schema.MODEL_NAMES`` is the platform's name
list; a test holds it equal to this catalogue's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

# The TrainConfig settings the ranker itself reads, whatever the sequence module.
RANKER_KNOBS = ("embedding_dim", "dropout", "id_tokens", "sequence_counts")
# What attention-based sequence modules read on top.
ATTENTION_KNOBS = ("d_model", "num_layers", "num_heads", "dim_feedforward")


@dataclass(frozen=True)
class ModelEntry:
    """One model: ``builder`` is ``"module:Class"`` (imported only when a model is built) and
    ``builder_args`` the arguments after the sequence config (TransAct's version)."""

    name: str
    kind: Literal["baseline", "sequence"]
    summary: str
    builder: str
    builder_args: tuple[Any, ...] = ()
    cross_layers: int = 0  # DCN v2 layers over the ranker's whole feature vector (TransAct v1.1)
    knobs: tuple[str, ...] = ()  # the TrainConfig settings it reads beyond the training loop's

    def build(self, *args: Any, **settings: Any) -> Any:
        """The model's class called with ``args``, its own arguments, then ``settings``: a sequence
        module from its SequenceConfig, a baseline with its seed and threads."""
        module, _, attribute = self.builder.partition(":")
        return getattr(importlib.import_module(module), attribute)(*args, *self.builder_args, **settings)


MODELS: tuple[ModelEntry, ...] = (
    ModelEntry("lr", "baseline", "logistic regression on the flat features (Pinnability's baseline)",
               "models.baselines:FlatBaseline", ("lr",), knobs=("baseline_validation", "cv_folds")),
    ModelEntry("gbdt", "baseline", "gradient-boosted trees on the flat features (Pinnability's baseline)",
               "models.baselines:FlatBaseline", ("gbdt",), knobs=("baseline_validation", "cv_folds")),
    ModelEntry("none", "sequence", "the ranker without a realtime sequence (the control)",
               "models.sequence:NoSequence", knobs=RANKER_KNOBS),
    ModelEntry("avgpool", "sequence", "average pooling of the sequence's tokens",
               "models.sequence:AveragePooling", knobs=RANKER_KNOBS),
    ModelEntry("cnn", "sequence", "1-D convolutions over the sequence, max-pooled",
               "models.sequence:ConvPooling", knobs=(*RANKER_KNOBS, "d_model")),
    ModelEntry("rnn", "sequence", "a recurrent network's last state",
               "models.sequence:RecurrentPooling", ("rnn",), knobs=(*RANKER_KNOBS, "d_model")),
    ModelEntry("lstm", "sequence", "an LSTM's last state",
               "models.sequence:RecurrentPooling", ("lstm",), knobs=(*RANKER_KNOBS, "d_model")),
    ModelEntry("transformer", "sequence", "a transformer encoder over the sequence, mean-pooled (candidate-independent)",
               "models.sequence:VanillaTransformer", knobs=(*RANKER_KNOBS, *ATTENTION_KNOBS)),
    ModelEntry("transact_v10", "sequence", "TransAct v1.0: candidate fused into every token, all output tokens",
               "models.sequence:TransAct", ("v1.0",),
               knobs=(*RANKER_KNOBS, *ATTENTION_KNOBS, "time_window_ms", "time_window_mask_prob")),
    ModelEntry("transact_v11", "sequence", "TransAct v1.1: the first 10 tokens and a max-pool, DCN v2 over the features",
               "models.sequence:TransAct", ("v1.1",), cross_layers=2,
               knobs=(*RANKER_KNOBS, *ATTENTION_KNOBS, "time_window_ms", "time_window_mask_prob")),
)

MODEL_NAMES = tuple(m.name for m in MODELS)
BASELINE_NAMES = tuple(m.name for m in MODELS if m.kind == "baseline")
SEQUENCE_MODULE_NAMES = tuple(m.name for m in MODELS if m.kind == "sequence")


def entry(name: str) -> ModelEntry:
    for model in MODELS:
        if model.name == name:
            return model
    raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
