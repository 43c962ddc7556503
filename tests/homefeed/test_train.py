import json

import numpy as np
import pytest

from homefeed import train as trainer
from homefeed.data import InstanceStream, pad_lists, read_instances, read_rows
from homefeed.processes import free_port
from models.zoo import load_scorer


def test_pad_lists_truncates_and_right_pads():
    import pyarrow as pa

    padded = pad_lists(pa.array([[1, 2, 3], [], [4]]), 2, np.int64)
    assert padded.tolist() == [[1, 2], [0, 0], [4, 0]]


def test_stream_shards_rows_across_ranks_without_overlap(instances_dir):
    seen = []
    for rank in range(2):
        stream = InstanceStream(str(instances_dir), "validation", 64, rank=rank, world_size=2, drop_remainder=True)
        batches = list(stream)
        assert len(batches) == stream.batches_per_rank()
        seen.append({(int(p), int(t)) for b in batches for p, t in zip(b["pin_id"], b["ts"])})
    assert not seen[0] & seen[1]


@pytest.mark.parametrize("model", ["lr", "gbdt", "lstm", "transact_v11"])
def test_each_kind_trains_saves_and_scores(instances_dir, tmp_path, base_config, model):
    cfg = base_config.with_overrides({"train": {"model": model}})
    result = trainer.train(str(instances_dir), str(tmp_path), cfg)
    assert 0.0 <= result.validation["repin"]["auc"] <= 1.0

    test = read_instances(str(instances_dir), "test")
    probs = load_scorer(result.model_dir).predict(test)
    assert probs.shape == (test.num_rows, 4)
    assert np.all((probs >= 0) & (probs <= 1))


def test_loss_decreases_and_training_resumes_from_the_checkpoint(instances_dir, tmp_path, base_config):
    cfg = base_config.with_overrides({"train": {"model": "avgpool", "epochs": 1, "patience": 5}})
    first = trainer.train(str(instances_dir), str(tmp_path), cfg)
    assert len(first.history) == 1
    resumed = trainer.train(str(instances_dir), str(tmp_path), cfg.with_overrides({"train": {"epochs": 3}}))
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history[0] == first.history[0]  # epoch 0 was not trained again
    assert resumed.history[-1]["train_loss"] < resumed.history[0]["train_loss"]


def test_two_process_gloo_ddp_run_completes(instances_dir, tmp_path, base_config):
    cfg = base_config.with_overrides({"train": {"model": "transformer", "num_processes": 2, "num_threads": 2}})
    result = trainer.train(str(instances_dir), str(tmp_path), cfg)
    saved = json.loads((tmp_path / trainer.METRICS).read_text())
    assert saved["model"] == "transformer"
    assert result.history and result.history[0]["examples"] > 0
    assert load_scorer(result.model_dir).name == "transformer"


@pytest.mark.slow
def test_two_nodes_on_loopback_train_the_same_model_as_one_node_with_two_processes(instances_dir, tmp_path, base_config):
    """torchrun --nnodes 2 (one process each, static rendezvous on 127.0.0.1) vs --nnodes 1 with 2 processes."""
    import subprocess

    import torch

    tcfg = base_config.with_overrides({"train": {"model": "avgpool", "num_threads": 2}}).train
    one_node = tmp_path / "one-node"
    trainer.train(str(instances_dir), str(one_node), base_config.with_overrides({"train": {**tcfg.model_dump(), "num_processes": 2}}))
    two_nodes = tmp_path / "two-nodes"
    config_file = trainer.write_worker_config(str(two_nodes), tcfg)
    port = free_port()
    nodes = [
        subprocess.Popen(trainer.torchrun_command(str(instances_dir), str(two_nodes), config_file, 1, nnodes=2, node_rank=rank, master_port=port),
                         env=trainer.worker_env())
        for rank in (0, 1)
    ]
    assert [node.wait(timeout=600) for node in nodes] == [0, 0]
    a = torch.load(one_node / trainer.MODEL_DIR / "ranker.pt", weights_only=True)
    b = torch.load(two_nodes / trainer.MODEL_DIR / "ranker.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    history = json.loads((two_nodes / trainer.METRICS).read_text())["history"]
    assert history[0]["examples"] == json.loads((one_node / trainer.METRICS).read_text())["history"][0]["examples"]


def test_training_on_unpublished_instances_fails_clearly(tmp_path, base_config):
    from homefeed.storage import StorageError

    with pytest.raises(StorageError, match="instances not found"):
        trainer.train(str(tmp_path / "nothing"), str(tmp_path / "out"), base_config)


@pytest.mark.parametrize("mode", ["kfold", "split_90_10"])
def test_baselines_offer_the_seeds_cross_validation_and_90_10_split(instances_dir, tmp_path, base_config, mode):
    cfg = base_config.with_overrides({"train": {"model": "lr", "baseline_validation": mode, "cv_folds": 3}})
    result = trainer.train(str(instances_dir), str(tmp_path), cfg)
    selection = result.model_selection
    assert selection["mode"] == mode
    if mode == "kfold":
        assert len(selection["auc_per_fold"]) == 3
        assert 0.5 < selection["auc"]["repin"]["mean"] <= 1.0 and selection["auc"]["repin"]["std"] >= 0.0
    else:
        rows = selection["rows"]
        folds = read_rows(str(instances_dir), "train", ("fold",)).column("fold").to_numpy()
        assert (rows["fit"], rows["checked"]) == (int((folds != 9).sum()), int((folds == 9).sum()))  # one user fold of ten
        assert 0.0 <= selection["auc_10_percent"]["repin"] <= 1.0
    assert 0.5 < result.validation["repin"]["auc"] <= 1.0  # the validation day, as in every mode
    saved = json.loads((tmp_path / trainer.METRICS).read_text())
    assert saved["model_selection"]["mode"] == mode


def test_unknown_baseline_validation_mode_is_rejected(base_config):
    from homefeed.config import ConfigError

    with pytest.raises(ConfigError, match="baseline_validation"):
        base_config.with_overrides({"train": {"baseline_validation": "loo"}})


def test_a_checkpoint_of_other_instances_or_another_model_is_not_resumed(instances_dir, tmp_path, base_config):
    """Before: the second run "trained" in seconds and returned the first run's model (other
    instances), or failed in load_state_dict (another model) (issue 21, item 5)."""
    import shutil

    from homefeed import schema

    cfg = base_config.with_overrides({"train": {"model": "none", "epochs": 1}})
    first = trainer.train(str(instances_dir), str(tmp_path / "out"), cfg)
    other = tmp_path / "other-instances"
    shutil.copytree(instances_dir, other)
    manifest = json.loads((other / schema.MANIFEST).read_text())
    (other / schema.MANIFEST).write_text(json.dumps({**manifest, "fingerprint": "other-inputs"}))
    second = trainer.train(str(other), str(tmp_path / "out"), cfg)
    assert [h["epoch"] for h in second.history] == [0] and second.history[0]["examples"] > 0
    assert second.history[0]["seconds"] != first.history[0]["seconds"]  # trained again, not the saved epoch
    lstm = trainer.train(str(other), str(tmp_path / "out"), cfg.with_overrides({"train": {"model": "lstm"}}))
    assert lstm.model == "lstm" and [h["epoch"] for h in lstm.history] == [0]
