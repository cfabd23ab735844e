#!/usr/bin/env bash
# GPU checks (CUDA paths, tiling speed, H&E fine-tuning), for one GPU in at most ~8 minutes. Run from the repository root:
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
# 1. the tests that need CUDA (they skip on a CPU-only machine);
# 2. bench_tiling.py with the default device (cuda when present): ours vs MONAI;
# 3. the H&E fine-tuning protocol (benchmarks/real_he.py) for 60 s, AMP on, one fold
#    (needs ../shared/data; skips with a line otherwise).
# MONAI is a benchmark-only extra: pip install monai (it must not pull torchvision).
set -u
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: nothing to check'; print(torch.cuda.get_device_name(0), torch.__version__)" || exit 1
start=$(date +%s)
echo "== 1. CUDA tests"
timeout 120 python -m pytest -q -k "cuda" tests/test_channels.py tests/test_ddp.py tests/test_training.py tests/test_tiling.py
echo "== 2. bench_tiling (default device = cuda)"
timeout 180 python benchmarks/bench_tiling.py --repeats 2 --skip memory
echo "== 3. H&E fine-tuning protocol, 60 s, AMP, fold 1 (ours vs MONAI)"
timeout 240 python benchmarks/real_he.py --device cuda --amp --budgets 60 --folds 1
echo "== done in $(( $(date +%s) - start )) s"
