"""How a request's own earlier actions order its candidates: issue 20's within-request diagnostic.

Scores every row of an instances split by how many likes (``repin``) its sequence holds, split
into the likes of the row's own day and the earlier ones, and prints each score's pooled AUC and
its AUC within requests (:func:`homefeed.metrics.request_auc`), then the like rate of the rows of
requests with a like, up to the day's first like and after it. On user-day requests whose rows
keep their own sequences (KuaiRand, ``--request-window 1d``), "liked earlier today" is a sign of
the rows *after* a like, so it orders a request's candidates backwards.

    .venv/bin/python scripts/within_request_likes.py OUT/instances [validation|test]
"""

from __future__ import annotations

import sys

import numpy as np

from homefeed import metrics, schema
from homefeed.data import read_instances

DAY_MS = 86_400_000


def like_counts(table) -> dict[str, np.ndarray]:
    """Per row: likes in its sequence, those of the row's own UTC day, and those before it."""
    repin = schema.ACTION_CODES["repin"]
    day_start = table.column("ts").to_numpy() // DAY_MS * DAY_MS
    actions = table.column(schema.SEQ_ACTION).to_pylist()
    times = table.column(schema.SEQ_TS).to_pylist()
    total = np.array([sum(a == repin for a in acts) for acts in actions])
    today = np.array([sum(a == repin and t >= start for a, t in zip(acts, ts)) for acts, ts, start in zip(actions, times, day_start)])
    return {"likes in the sequence": total, "likes today": today, "likes before today": total - today}


def main(instances: str, split: str = "validation") -> None:
    table = read_instances(instances, split, columns=("request_id", "ts", schema.label_column("repin")))
    liked = table.column(schema.label_column("repin")).to_numpy()
    requests = table.column("request_id").to_numpy(zero_copy_only=False)
    print(f"{split}: {table.num_rows} rows, like rate {liked.mean():.4f}")
    counts = like_counts(table)
    for name, score in counts.items():
        within, counted = metrics.request_auc(requests, liked, score.astype(float))
        print(f"  {name:20s} pooled AUC {metrics.auc(liked, score):.4f}   AUC within requests {within:.4f} (n={counted})")
    _, code = np.unique(requests, return_inverse=True)
    with_like = np.bincount(code, weights=liked)[code] > 0
    after = counts["likes today"] > 0
    print(f"  rows of requests with a like: {int(with_like.sum())}; like rate up to the day's first like (included) "
          f"{liked[with_like & ~after].mean():.3f}, after it {liked[with_like & after].mean():.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
