"""homefeed run's run labels: two runs started in the same second never share a directory."""

from concurrent.futures import ThreadPoolExecutor

from homefeed import local_platform


def test_runs_claimed_at_once_get_their_own_directories(base_config, tmp_path):
    cfg = base_config.with_overrides({"storage": {"root": str(tmp_path)}})
    with ThreadPoolExecutor(4) as pool:
        labels = list(pool.map(lambda _: local_platform.claim_run_label(cfg), range(8)))
    assert len(set(labels)) == 8
    assert all((tmp_path / "runs" / label).is_dir() for label in labels)
    assert all(label.startswith("run-") for label in labels)
