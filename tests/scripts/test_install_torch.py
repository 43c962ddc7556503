"""scripts/install_torch.sh: which torch build a fresh machine asks pip for, and the check after it.

pip is replaced by a stub python that records each `pip install` and answers as a machine with or
without a local wheel store would; `import torch` finds a fake module that reports the build the
stub "installed", so the script's own check runs for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_torch.sh"

STUB = """#!/usr/bin/env bash
if [ "$1" = "-m" ]; then
  echo "$*" >> "$STUB_LOG"
  case " $* " in
    *" --no-index "*) [ "$STUB_LOCAL_STORE" = 1 ] || exit 1 ;;
  esac
  exit 0
fi
exec {python} "$@"
"""

FAKE_TORCH = """import os
__version__ = os.environ["STUB_TORCH_VERSION"]
class version:
    cuda = os.environ.get("STUB_TORCH_CUDA") or None
"""


def _run(tmp_path: Path, gpu: str = "", local_store: bool = False, arrives: tuple[str, str] = ("2.13.0+cpu", "")):
    stub = tmp_path / "python"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    (tmp_path / "fake").mkdir(exist_ok=True)
    (tmp_path / "fake" / "torch.py").write_text(FAKE_TORCH)
    log = tmp_path / "pip.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "STUB_LOG": str(log), "STUB_LOCAL_STORE": "1" if local_store else "0",
           "STUB_TORCH_VERSION": arrives[0], "STUB_TORCH_CUDA": arrives[1], "PYTHONPATH": str(tmp_path / "fake"),
           "PATH": "/usr/bin:/bin"}  # no nvidia-smi: the machine has no GPU
    result = subprocess.run(["bash", str(SCRIPT), str(stub), gpu], env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines() if log.exists() else []


def test_a_public_machine_gets_the_cpu_build_from_pytorchs_cpu_index(tmp_path):
    result, calls = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--no-deps --no-index torch==2.13.0" in calls[0]  # the local store is tried first, and is absent
    assert calls[1].endswith("--extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu")
    assert "torch 2.13.0+cpu (CPU build)" in result.stderr


def test_a_local_wheel_store_is_used_and_pytorchs_index_is_never_asked(tmp_path):
    result, calls = _run(tmp_path, local_store=True)
    assert result.returncode == 0, result.stderr
    assert "--no-deps --no-index torch==2.13.0" in calls[0]
    assert len(calls) == 2 and calls[1].endswith(" torch==2.13.0") and "--extra-index-url" not in calls[1]  # its dependencies


def test_gpu_1_installs_the_cuda_build_on_purpose_and_the_check_lets_it_through(tmp_path):
    result, calls = _run(tmp_path, gpu="1", arrives=("2.13.0", "12.8"))
    assert result.returncode == 0, result.stderr
    assert len(calls) == 1 and calls[0].endswith(" torch==2.13.0") and "--index" not in calls[0]
    assert "CUDA 12.8 build" in result.stderr


def test_a_cuda_build_where_the_cpu_build_was_asked_for_fails_in_one_line(tmp_path):
    result, _ = _run(tmp_path, arrives=("2.13.0", "12.8"))
    assert result.returncode != 0
    assert "a CUDA build of torch arrived (2.13.0) where the CPU build was asked for" in result.stderr
    assert "Traceback" not in result.stderr
