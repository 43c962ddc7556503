"""A model is one entry in models.catalog: the platform's names, the builders, the ranker's
overrides and the knobs all come from it, and every default is stated once."""

import ast
import json
from pathlib import Path

import pytest

from homefeed import schema
from homefeed.config import TrainConfig
from models import catalog
from models.ranker import RankerConfig
from models.sequence import SequenceConfig, build_sequence_module

ROOT = Path(__file__).resolve().parents[2]


def test_the_platforms_name_lists_are_the_catalogues():
    assert catalog.MODEL_NAMES == schema.MODEL_NAMES
    assert catalog.BASELINE_NAMES == schema.BASELINE_NAMES
    assert catalog.SEQUENCE_MODULE_NAMES == schema.SEQUENCE_MODULE_NAMES


@pytest.mark.parametrize("model", catalog.MODELS, ids=lambda m: m.name)
def test_every_entry_builds_and_names_only_real_knobs(model):
    built = model.build(SequenceConfig(pin_dim=8)) if model.kind == "sequence" else model.build(seed=0, num_threads=1)
    assert built is not None
    assert set(model.knobs) <= set(TrainConfig.model_fields), model.knobs


def test_the_ranker_takes_its_dcn_layers_from_the_entry_and_an_old_config_loads_unchanged():
    assert RankerConfig(sequence_module="transact_v11").cross_layers == 2
    assert RankerConfig(sequence_module="lstm").cross_layers == 0
    assert RankerConfig(sequence_module="lstm", cross_layers=3).cross_layers == 3  # an explicit value wins
    saved = RankerConfig(sequence_module="transact_v11", cross_layers=0).to_json()  # a checkpoint's config
    assert RankerConfig.from_json(saved).cross_layers == 0
    assert json.loads(saved)["cross_layers"] == 0


def test_the_models_defaults_are_the_training_configs():
    """Before: SequenceConfig said d_model 96 and 2 layers where the config said 32 and 1."""
    train, sequence, ranker = TrainConfig(), SequenceConfig(), RankerConfig()
    assert (sequence.d_model, sequence.num_layers, sequence.num_heads, sequence.dim_feedforward, sequence.action_dim, sequence.dropout) == (
        train.d_model, train.num_layers, train.num_heads, train.dim_feedforward, train.embedding_dim, train.dropout)
    assert (ranker.sequence_module, ranker.id_dim, ranker.dropout) == (train.model, train.embedding_dim, train.dropout)
    assert RankerConfig.from_train(TrainConfig(model="transact_v11", d_model=48)).sequence.d_model == 48


def test_an_unknown_or_a_baseline_name_is_not_a_sequence_module():
    with pytest.raises(ValueError, match="unknown model 'mamba'"):
        catalog.entry("mamba")
    with pytest.raises(ValueError, match="'gbdt' is a baseline model"):
        build_sequence_module("gbdt", SequenceConfig())


def test_no_code_outside_the_models_decides_by_a_model_name():
    """`cross_layers=2 if model == "transact_v11"` lived in train.py and three benchmarks; what a
    model does differently belongs to its entry (or its own class in models/)."""
    offenders = []
    for package in ("homefeed", "jobs", "benchmarks", "dags"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare) and _compares_a_model_with_its_name(node):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def _compares_a_model_with_its_name(node: ast.Compare) -> bool:
    """``cfg.model == "transact_v11"``, not ``method == "none"`` (a name shared with other settings)."""
    sides = (node.left, *node.comparators)
    named = any(isinstance(side, ast.Constant) and side.value in schema.MODEL_NAMES for side in sides)
    about_a_model = any("model" in ast.unparse(side) or "sequence_module" in ast.unparse(side)
                        for side in sides if not isinstance(side, ast.Constant))
    return named and about_a_model


def test_the_name_check_catches_the_branch_it_was_written_for():
    assert _compares_a_model_with_its_name(ast.parse('2 if cfg.model == "transact_v11" else 0').body[0].value.test)
    assert not _compares_a_model_with_its_name(ast.parse('ecfg.method == "none"').body[0].value)
