#!/usr/bin/env bash
# Install torch into the venv: the CPU build unless a GPU build is asked for (GPU=1) or a GPU is seen.
#
#   scripts/install_torch.sh VENV_PYTHON [GPU]
#
# - A pip configured with a local wheel store (find-links holding torch 2.13.0) takes it from there
#   and nothing is downloaded.
# - Otherwise the CPU build comes from PyTorch's CPU wheel index (torch==2.13.0+cpu, ~190 MB);
#   PyPI's plain `torch` on Linux is the CUDA build (~900 MB of torch plus ~2.5 GB of NVIDIA
#   libraries), which a CPU machine never uses.
# - GPU=1 (or an `nvidia-smi` that lists a GPU) installs the CUDA build from PyPI on purpose.
#
# Then it checks that what arrived is what was asked for, in one line.
set -euo pipefail
python_bin="$1"
gpu="${2:-}"
version="${HOMEFEED_TORCH_VERSION:-2.13.0}"
cpu_index="${HOMEFEED_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
pip=("$python_bin" -m pip install --quiet --disable-pip-version-check)

if [ -z "$gpu" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  gpu=1
  echo "install_torch: a GPU is present (nvidia-smi): installing the CUDA build of torch $version (GPU=0 for the CPU build)" >&2
fi

if [ "$gpu" = "1" ]; then
  build=cuda
  "${pip[@]}" "torch==$version"
elif "${pip[@]}" --no-deps --no-index "torch==$version" 2>/dev/null; then
  build=cpu  # a local wheel store (pip's find-links) holds it: nothing downloaded
  "${pip[@]}" "torch==$version"  # its dependencies, from pip's configured index
else
  build=cpu
  echo "install_torch: torch $version, CPU build, from $cpu_index (~190 MB)" >&2
  "${pip[@]}" --extra-index-url "$cpu_index" "torch==$version+cpu"
fi

"$python_bin" -W ignore - "$build" <<'EOF'  # numpy is not installed yet: torch warns about it
import sys

import torch

wanted = sys.argv[1]
cuda = bool(torch.version.cuda) and "+cpu" not in torch.__version__
if wanted == "cpu" and cuda:
    sys.exit(f"install_torch: a CUDA build of torch arrived ({torch.__version__}) where the CPU build was asked for; "
             "remove .venv and run make again, or ask for the GPU build with GPU=1")
print(f"install_torch: torch {torch.__version__} ({'CUDA ' + torch.version.cuda if cuda else 'CPU'} build)", file=sys.stderr)
EOF
