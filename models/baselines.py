"""Pinnability (2015) baselines: logistic regression and GBDT on the flat feature vector.

One estimator per action head, behind the same fit / predict / save / load interface as the
neural ranker's scorer. The flat vector is the dense features, the candidate pin's embedding and
one-hot categorical features: no realtime sequence.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa

from homefeed import schema
from homefeed.data import labels_and_weights


def flat_features(table: pa.Table) -> np.ndarray:
    """(N, F) float32: dense, pin embedding, one-hot categoricals."""
    n = table.num_rows
    dense = np.stack([table.column(f).to_numpy(zero_copy_only=False) for f in schema.DENSE_FEATURES], axis=1)
    emb = table.column(schema.PIN_EMBEDDING).combine_chunks()
    emb = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, -1)
    one_hot = []
    for name, size in schema.CATEGORICAL_FEATURES.items():
        codes = np.clip(table.column(name).to_numpy(zero_copy_only=False).astype(np.int64), 0, size - 1)
        one_hot.append(np.eye(size, dtype=np.float32)[codes])
    return np.nan_to_num(np.concatenate([dense.astype(np.float32), emb, *one_hot], axis=1))


class ConstantRate:
    """For a head with one class only in training: predict its weighted rate."""

    def __init__(self, rate: float):
        self.rate = rate

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([np.full(len(x), 1 - self.rate), np.full(len(x), self.rate)])


class FlatBaseline:
    def __init__(self, kind: str, seed: int = 0, num_threads: int = 2):
        if kind not in ("lr", "gbdt"):
            raise ValueError(f"unknown baseline {kind!r}")
        self.kind, self.seed, self.num_threads = kind, seed, num_threads
        self.estimators: dict[str, object] = {}

    def _estimator(self):
        if self.kind == "lr":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(max_iter=1000, C=1.0)
        import lightgbm as lgb

        return lgb.LGBMClassifier(
            n_estimators=300, learning_rate=0.05, num_leaves=31, min_child_samples=20,
            subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
            random_state=self.seed, n_jobs=self.num_threads, verbose=-1,
        )

    def fit(self, train: pa.Table, validation: pa.Table | None = None) -> "FlatBaseline":
        x, (y, w) = flat_features(train), labels_and_weights(train)
        for i, head in enumerate(schema.HEADS):
            if len(np.unique(y[:, i])) < 2:
                self.estimators[head] = ConstantRate(float(np.average(y[:, i], weights=w)))
                continue
            estimator = self._estimator()
            fit_kwargs = {"sample_weight": w}
            if self.kind == "gbdt" and validation is not None:
                import lightgbm as lgb

                xv, (yv, wv) = flat_features(validation), labels_and_weights(validation)
                if len(np.unique(yv[:, i])) == 2:
                    fit_kwargs |= {
                        "eval_set": [(xv, yv[:, i])], "eval_sample_weight": [wv], "eval_metric": "auc",
                        "callbacks": [lgb.early_stopping(30, verbose=False)],
                    }
            estimator.fit(x, y[:, i], **fit_kwargs)
            self.estimators[head] = estimator
        return self

    def predict(self, table: pa.Table) -> np.ndarray:
        """(N, H) probabilities, columns in schema.HEADS order."""
        x = flat_features(table)
        return np.column_stack([self.estimators[h].predict_proba(x)[:, 1] for h in schema.HEADS])

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "baseline.pkl", "wb") as fh:
            pickle.dump(self, fh)

    @staticmethod
    def load(directory: str | Path) -> "FlatBaseline":
        with open(Path(directory) / "baseline.pkl", "rb") as fh:
            return pickle.load(fh)
