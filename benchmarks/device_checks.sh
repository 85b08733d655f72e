#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a lent device (see the device tool's notes):
# the CUDA tests (normally skipped), then the GPU benchmarks, results under OUT (default
# docs/benchmarks). Uses the machine's own python3 with PyTorch; ecprune from src/.
#   OUT=$OUT bash benchmarks/device_checks.sh
set -uo pipefail
OUT=${OUT:-docs/benchmarks}
mkdir -p "$OUT"
export PYTHONPATH=src:benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -rs -p no:cacheprovider tests/test_pattern.py tests/test_prune.py \
    tests/test_sensitivity.py -k "cuda or gpu or semi_structured" 2>&1 | tee "$OUT/cuda_tests.txt"
tests=${PIPESTATUS[0]}
python3 benchmarks/semi_structured_latency.py --out "$OUT/semi_structured.json"
python3 benchmarks/neuron_latency.py --device cuda --threads 1 --out "$OUT/neuron_latency_cuda.json"
exit "$tests"
