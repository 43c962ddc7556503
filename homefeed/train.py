"""Training: the baselines in-process, the neural ranker with the same code for 1 or N processes.

The neural path is a DDP worker (``train_worker``). One process runs it directly; N processes
run it under ``torchrun`` (``gloo`` on CPU, ``nccl`` + bf16 autocast on GPU). Each epoch ends
with a checkpoint; a re-run with the same output directory resumes from it when it is the same
training (same instances and settings, ``training_key``), and starts fresh otherwise. Early stopping
watches the primary head's validation AUC. Rank 0 alone writes the model and metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from homefeed import metrics, progress, schema, storage
from homefeed.config import Config, TrainConfig
from homefeed.data import InstanceDataset, labels_and_weights
from homefeed.processes import free_port
from models import BASELINE_NAMES, catalog
from models.ranker import Ranker, RankerConfig, content_scaling, pin_content_table, weighted_bce
from models.zoo import write_model_info

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOSS_EVERY_STEPS = 10  # the MLflow loss curve: the mean loss of every 10 batches
MODEL_DIR = "model"
METRICS = "train_metrics.json"


@dataclass
class TrainResult:
    model_dir: str
    model: str
    validation: dict[str, dict[str, float]]
    history: list[dict[str, Any]]
    seconds: float
    examples_per_second: float
    model_selection: dict[str, Any] | None = None  # baselines: k-fold / 90-10 results


# --------------------------------------------------------------------------- model building
def build_ranker(cfg: TrainConfig, instances: InstanceDataset | str) -> Ranker:
    dataset = InstanceDataset.of(instances)
    pin_ids, vectors = dataset.pin_features()
    mean, std = content_scaling(vectors)
    model = Ranker(replace(RankerConfig.from_train(cfg), content_mean=mean, content_std=std), pin_content_table(pin_ids, vectors))
    # The manifest's train rates are weighted by sample_weight, as the loss is.
    model.init_head_bias(dataset.label_rates("train"))
    return model


# Settings a resumed training may change: more epochs, more patience, other parallelism.
RESUMABLE_SETTINGS = ("epochs", "patience", "num_processes", "num_threads", "use_gpu", "compile")


def training_key(instances: InstanceDataset | str, cfg: TrainConfig) -> str:
    """What a checkpoint belongs to: the instances (their manifest's fingerprint of inputs and
    config) and every training setting that changes what is learned. A checkpoint with another
    key is not resumed (it would return another training's model, or fail to load)."""
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in RESUMABLE_SETTINGS}
    return storage.fingerprint({"instances": InstanceDataset.of(instances).fingerprint, "train": settings})


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def pick_device(use_gpu: bool | str) -> torch.device:
    if use_gpu is True and not torch.cuda.is_available():
        raise RuntimeError("train.use_gpu is true but no CUDA device is visible")
    if use_gpu in (True, "auto") and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# --------------------------------------------------------------------------- evaluation helper
def predict_split(model: torch.nn.Module, instances: InstanceDataset | str, split: str, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities (N, H), labels (N, H), weights (N,)) over a whole split."""
    stream = InstanceDataset.of(instances).stream(split, batch_size, seq_len=getattr(model, "cfg").sequence.seq_len)
    probs, labels, weights = [], [], []
    model.eval()
    with torch.inference_mode():
        for batch in stream:
            labels.append(batch.pop("labels").numpy())
            weights.append(batch.pop("sample_weight").numpy())
            batch = {k: v.to(device) for k, v in batch.items()}
            with _autocast(device):
                probs.append(torch.sigmoid(model(batch).float()).cpu().numpy())
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(weights)


def validation_metrics(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict[str, dict[str, float]]:
    return {h: metrics.head_metrics(labels[:, i], probs[:, i], weights) for i, h in enumerate(schema.HEADS)}


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# --------------------------------------------------------------------------- the worker
def _progress_line(epoch: int, epochs: int, batch: int, batches: int, losses: list[float], examples: int,
                   epoch_seconds: float, done: int, remaining: int, run_seconds: float) -> None:
    progress.report("train: epoch %d/%d, batch %d/%d (%d%%), loss %.4f, %s examples/s, ETA %s", epoch + 1, epochs, batch, batches,
                    100 * batch // max(batches, 1), float(np.mean(losses[-LOSS_EVERY_STEPS:])), f"{examples / max(epoch_seconds, 1e-9):,.0f}",
                    progress.eta(done, done + remaining, run_seconds), live=True)


@dataclass
class _Worker:
    """One DDP worker's training: what the steps below share."""

    cfg: TrainConfig
    rank: int
    world_size: int
    distributed: bool
    device: torch.device
    out: Path
    dataset: InstanceDataset
    model: Any
    ddp_model: Any
    train_stream: Any
    steps_per_epoch: int
    optimizer: Any
    scheduler: Any
    head_weights: torch.Tensor
    step_metrics: Any
    key: str

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT


def _set_up(instances_dir: str, out_dir: str, cfg: TrainConfig, tracking: tuple[str, str] | None) -> _Worker:
    """The process group, threads and seed, the model (DDP-wrapped when distributed), its stream,
    optimizer and schedule, and rank 0's live MLflow metrics."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    device = pick_device(cfg.use_gpu)
    # Under torchrun (even with one process) join the process group, so the NCCL/gloo path runs.
    distributed = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, cfg.num_threads // world_size))
    torch.manual_seed(cfg.seed + rank)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    dataset = InstanceDataset.open(instances_dir)
    model = build_ranker(cfg, dataset).to(device)
    if cfg.compile:
        from models.compilation import compile_sequence_module

        progress.report("train: %s", compile_sequence_module(model, None, training=True).describe(f"{cfg.model} for training"))
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    train_stream = dataset.stream(
        "train", cfg.batch_size, seq_len=model.cfg.sequence.seq_len, shuffle=True,
        seed=cfg.seed, rank=rank, world_size=world_size, drop_remainder=distributed, shuffle_unit=cfg.shuffle_unit,
    )
    steps_per_epoch = max(train_stream.batches_per_rank(), 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, cfg.epochs * steps_per_epoch)
    )
    head_weights = torch.tensor([cfg.head_weights.get(h, 1.0) for h in schema.HEADS], device=device)
    step_metrics = None
    if tracking is not None and rank == 0:
        from homefeed.registry import StepMetrics

        step_metrics = StepMetrics(*tracking)
    return _Worker(cfg, rank, world_size, distributed, device, out, dataset, model, ddp_model, train_stream, steps_per_epoch,
                   optimizer, scheduler, head_weights, step_metrics, training_key(dataset, cfg))


def _resume(worker: _Worker) -> dict[str, Any]:
    """The training state: a checkpoint's of this same training, else a fresh one."""
    state = {"epoch": 0, "best_auc": -1.0, "bad_epochs": 0, "history": [], "best_state": None, "examples": 0, "seconds": 0.0}
    path = worker.checkpoint
    saved = torch.load(path, map_location=worker.device, weights_only=False) if path.exists() else None
    if saved is not None and saved.get("key") != worker.key:
        if worker.rank == 0:
            log.warning("the checkpoint in %s is of another training (other instances, model or settings): training from scratch", worker.out)
        saved = None
    if saved is None:
        return state
    worker.model.load_state_dict(saved["model"])
    worker.optimizer.load_state_dict(saved["optimizer"])
    worker.scheduler.load_state_dict(saved["scheduler"])
    return saved["state"]


def _train_epoch(worker: _Worker, epoch: int, clock: dict[str, float]) -> tuple[list[float], int, float]:
    """One pass over this rank's share of the train split: (losses, examples, seconds)."""
    cfg = worker.cfg
    worker.train_stream.epoch = epoch
    worker.ddp_model.train()
    started, losses, examples = time.perf_counter(), [], 0
    for batch_index, batch in enumerate(worker.train_stream):
        batch = {k: v.to(worker.device, non_blocking=True) for k, v in batch.items()}
        labels, weights = batch.pop("labels"), batch.pop("sample_weight")
        with _autocast(worker.device):
            logits = worker.ddp_model(batch)
        loss = weighted_bce(logits.float(), labels, weights, worker.head_weights)
        worker.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(worker.model.parameters(), 5.0)
        worker.optimizer.step()
        worker.scheduler.step()
        losses.append(loss.item())
        examples += len(labels)
        clock["batches"] += 1
        step = epoch * worker.steps_per_epoch + batch_index + 1
        if worker.step_metrics is not None and step % LOSS_EVERY_STEPS == 0:
            worker.step_metrics.log("train_loss", float(np.mean(losses[-LOSS_EVERY_STEPS:])), step)
        if worker.rank == 0 and clock["ticker"].due():
            _progress_line(epoch, cfg.epochs, batch_index + 1, worker.steps_per_epoch, losses, examples * worker.world_size,
                           time.perf_counter() - started, clock["batches"], cfg.epochs * worker.steps_per_epoch - step,
                           time.perf_counter() - clock["started"])
    return losses, examples, time.perf_counter() - started


def _validate(worker: _Worker, state: dict[str, Any], epoch: int, losses: list[float], examples: int, elapsed: float) -> float:
    """Score the validation split, record the epoch in ``state`` (keeping the best weights); the
    primary head's AUC (-1 when undefined)."""
    cfg = worker.cfg
    # Scoring the validation day can outlast a progress interval: say so instead of going quiet.
    validating = progress.heartbeat(f"train: epoch {epoch + 1}/{cfg.epochs}, validation") if worker.rank == 0 else contextlib.nullcontext()
    with validating:
        probs, labels_np, weights_np = predict_split(worker.model, worker.dataset, "validation", 4 * cfg.batch_size, worker.device)
    val = validation_metrics(probs, labels_np, weights_np)
    val_auc = val[schema.PRIMARY_HEAD]["auc"]
    val_auc = -1.0 if np.isnan(val_auc) else val_auc
    improved = val_auc > state["best_auc"]
    state["history"].append(
        {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
         "val_auc": {h: m["auc"] for h, m in val.items()}, "examples": examples * worker.world_size, "seconds": elapsed}
    )
    state["examples"] += examples * worker.world_size
    state["seconds"] += elapsed
    if improved:
        state["best_auc"], state["bad_epochs"] = val_auc, 0
        state["best_state"] = {k: v.detach().cpu().clone() for k, v in worker.model.state_dict().items()}
        state["best_validation"] = val
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch + 1
    return val_auc


def _checkpoint(worker: _Worker, state: dict[str, Any], epoch: int, val_auc: float, examples: int, elapsed: float) -> None:
    """Rank 0: the checkpoint (published by rename), the epoch's line, its validation AUC in MLflow."""
    cfg = worker.cfg
    tmp = worker.checkpoint.with_suffix(".tmp")
    torch.save({"model": worker.model.state_dict(), "optimizer": worker.optimizer.state_dict(),
                "scheduler": worker.scheduler.state_dict(), "state": state, "key": worker.key}, tmp)
    tmp.replace(worker.checkpoint)
    progress.report("train: epoch %d/%d done in %s: loss %.4f, validation AUC %s %.4f, %s examples/s", epoch + 1, cfg.epochs,
                    progress.duration(elapsed), state["history"][-1]["train_loss"], schema.PRIMARY_HEAD, val_auc,
                    f"{examples * worker.world_size / max(elapsed, 1e-9):,.0f}")
    if worker.step_metrics is not None:
        step = (epoch + 1) * worker.steps_per_epoch
        for head, auc in state["history"][-1]["val_auc"].items():  # this epoch's, per head
            worker.step_metrics.log(f"val_auc_{head}", auc, step)
        worker.step_metrics.log("epoch", epoch + 1, step)
        worker.step_metrics.flush()


def _finish(worker: _Worker, state: dict[str, Any]) -> TrainResult | None:
    """Rank 0 saves the best weights and the result; every rank leaves the process group."""
    result = None
    if worker.rank == 0:
        cfg, out = worker.cfg, worker.out
        worker.model.load_state_dict(state["best_state"])
        worker.model.to("cpu").save(out / MODEL_DIR)
        write_model_info(out / MODEL_DIR, cfg.model, {"train_config": cfg.model_dump(mode="json")})
        result = TrainResult(
            model_dir=str(out / MODEL_DIR), model=cfg.model, validation=state.get("best_validation", {}),
            history=state["history"], seconds=state["seconds"],
            examples_per_second=state["examples"] / max(state["seconds"], 1e-9),
        )
        storage.write_json(out / METRICS, asdict(result))
    if worker.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return result


def train_worker(instances_dir: str, out_dir: str, cfg: TrainConfig, tracking: tuple[str, str] | None = None) -> TrainResult | None:
    """The DDP worker; returns the result on rank 0, None elsewhere. ``tracking``: (MLflow
    tracking URI, run id) that rank 0 logs the loss and validation AUC to while it trains."""
    worker = _set_up(instances_dir, out_dir, cfg, tracking)
    clock = {"ticker": progress.Ticker(), "started": time.perf_counter(), "batches": 0}
    state = _resume(worker)
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        epoch = state["epoch"]
        losses, examples, elapsed = _train_epoch(worker, epoch, clock)
        val_auc = _validate(worker, state, epoch, losses, examples, elapsed)
        if worker.rank == 0:
            _checkpoint(worker, state, epoch, val_auc, examples, elapsed)
    return _finish(worker, state)


# --------------------------------------------------------------------------- baselines
def _fit_and_check(kind: str, cfg: TrainConfig, fit_table, check_table):
    baseline = catalog.entry(kind).build(seed=cfg.seed, num_threads=cfg.num_threads).fit(fit_table, check_table)
    return baseline, validation_metrics(baseline.predict(check_table), *labels_and_weights(check_table))


def cross_validate(kind: str, cfg: TrainConfig, train_table) -> dict[str, Any]:
    """k-fold CV over the user folds of the train days: per-head AUC of each fold, mean and std."""
    folds = train_table.column(schema.FOLD).to_numpy() % cfg.cv_folds
    per_fold = []
    for k in range(cfg.cv_folds):
        held = folds == k
        _, metrics_k = _fit_and_check(kind, cfg, train_table.filter(~held), train_table.filter(held))
        per_fold.append({h: m["auc"] for h, m in metrics_k.items()})
    summary = {h: {"mean": float(np.nanmean([f[h] for f in per_fold])), "std": float(np.nanstd([f[h] for f in per_fold]))} for h in schema.HEADS}
    return {"folds": cfg.cv_folds, "auc_per_fold": per_fold, "auc": summary}


def train_baseline(instances_dir: str, out_dir: str, cfg: TrainConfig) -> TrainResult:
    """LR / GBDT. The returned validation metrics are on the validation day in every mode, so
    gates compare like with like; k-fold and 90/10 results are saved beside them."""
    started = time.perf_counter()
    dataset = InstanceDataset.open(instances_dir)
    train_table, validation_table = dataset.read("train"), dataset.read("validation")
    selection: dict[str, Any] = {"mode": cfg.baseline_validation}
    if cfg.baseline_validation == "split_90_10":
        tenth = train_table.column(schema.FOLD).to_numpy() % 10 == 9
        baseline, held_out = _fit_and_check(cfg.model, cfg, train_table.filter(~tenth), train_table.filter(tenth))
        selection["auc_10_percent"] = {h: m["auc"] for h, m in held_out.items()}
        selection["rows"] = {"fit": int((~tenth).sum()), "checked": int(tenth.sum())}
    else:
        if cfg.baseline_validation == "kfold":
            selection |= cross_validate(cfg.model, cfg, train_table)
        baseline, _ = _fit_and_check(cfg.model, cfg, train_table, validation_table)
    model_dir = Path(out_dir) / MODEL_DIR
    baseline.save(model_dir)
    write_model_info(model_dir, cfg.model, {"train_config": cfg.model_dump(mode="json"), "model_selection": selection})
    val = validation_metrics(baseline.predict(validation_table), *labels_and_weights(validation_table))
    seconds = time.perf_counter() - started
    result = TrainResult(str(model_dir), cfg.model, val, [], seconds, train_table.num_rows / max(seconds, 1e-9), selection)
    storage.write_json(Path(out_dir) / METRICS, asdict(result))
    return result


# --------------------------------------------------------------------------- entry point
def write_worker_config(out_dir: str, tcfg: TrainConfig) -> Path:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    config_file = Path(out_dir) / "train_config.json"
    config_file.write_text(json.dumps(tcfg.model_dump(mode="json")))
    return config_file


def torchrun_command(
    instances_dir: str, out_dir: str, config_file: Path, nproc_per_node: int,
    nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1", master_port: int = 29500,
    tracking: tuple[str, str] | None = None,
) -> list[str]:
    """The command one node runs; on N nodes each runs it with its ``node_rank`` (static rendezvous
    at ``master_addr:master_port``, the rank-0 node). ``out_dir`` must be shared storage."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}",
        f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}",
        "-m", "homefeed.train", instances_dir, out_dir, str(config_file), *(tracking or ()),
    ]


def worker_env() -> dict[str, str]:
    # gloo picks an interface by hostname; loopback is the one that always exists.
    return {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}


def train(instances_dir: str, out_dir: str, cfg: Config, tracking: tuple[str, str] | None = None) -> TrainResult:
    """Train ``cfg.train.model`` on published instances; the model lands in ``out_dir/model``.
    ``tracking``: (MLflow tracking URI, run id) for the live loss and validation curves."""
    storage.require_published(instances_dir, "instances")
    tcfg = cfg.train
    if tcfg.compile:  # the workers (torchrun's too) inherit where inductor caches its kernels
        from models.compilation import compile_cache_dir

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir(cfg.storage.root))
    if tcfg.model in BASELINE_NAMES:
        return train_baseline(instances_dir, out_dir, tcfg)
    if tcfg.num_processes == 1:
        return train_worker(instances_dir, out_dir, tcfg, tracking)
    config_file = write_worker_config(out_dir, tcfg)
    command = torchrun_command(instances_dir, out_dir, config_file, tcfg.num_processes, master_port=free_port(), tracking=tracking)
    completed = subprocess.run(command, env=worker_env())
    if completed.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit {completed.returncode}): {' '.join(command)}")
    saved = json.loads((Path(out_dir) / METRICS).read_text())
    return TrainResult(**saved)


if __name__ == "__main__":  # torchrun entry: python -m homefeed.train INSTANCES OUT CONFIG_JSON [TRACKING_URI RUN_ID]
    logging.basicConfig(level=logging.INFO, format="%(message)s [%(name)s]")  # what `homefeed run` shows
    instances, output, config_json = sys.argv[1:4]
    tracking_args = tuple(sys.argv[4:6])
    train_worker(instances, output, TrainConfig.model_validate_json(Path(config_json).read_text()), tracking_args if len(tracking_args) == 2 else None)
