#!/usr/bin/env bash
# The CUDA checks in one command, on a GPU machine (docs/performance.md, "On a GPU"):
#   1. tests/test_cuda.py: training in bf16 and fp16 on the GPU, resume there, GPU and CPU
#      evaluating the same weights alike, packed masks training there with a note;
#   2. scripts/bench_mfu.py --device cuda: plain and SMART K=1 step times and their share of the
#      GPU's GEMM rate at MiniLM's shapes, batch 16 x 128;
#   3. a 300-step throughput run of the quickstart (step_times.tsv: examples and seconds a step).
# Each one's output goes to $OUT (default runs/device_check); the script goes on past a failed part
# and exits non-zero if any failed. Where the packaged MiniLM or the data are not installed (a
# machine that cannot download), `python scripts/pack_for_device.py` here first writes .device/,
# which this script then uses: carry it along (its weights are stored in fp16: timings only).
#   bash scripts/device_check.sh
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$repo/runs/device_check}"
py="${PY:-python3}"
mkdir -p "$out"
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d "$repo/.device" ]; then
  export PYTHONPATH="$repo/.device/site:$PYTHONPATH" MTSMART_DATA="$repo/.device/data"
fi
failed=()

nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
"$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" \
  | tee "$out/versions.txt" || failed+=(versions)

"$py" -m pytest tests/test_cuda.py -rs -p no:cacheprovider 2>&1 | tee "$out/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=(tests)

"$py" scripts/bench_mfu.py --device cuda --repeats 10 2>&1 | tee "$out/bench_mfu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=(bench_mfu)

run="$repo/runs/device_throughput"
rm -rf "$run"
"$py" -m mtsmart train scripts/configs/quickstart.yaml train.max_steps=300 train.record_step_times=true \
  eval.every_steps=0 "output_dir=$run" > "$out/throughput.txt" 2>&1 || failed+=(throughput)
for file in step_times.tsv results.json; do
  [ -f "$run/$file" ] && cp "$run/$file" "$out/throughput_$file"
done
tail -n 20 "$out/throughput.txt"

if [ "${#failed[@]}" -gt 0 ]; then
  echo "device_check: failed: ${failed[*]} (outputs in $out)"
  exit 1
fi
echo "device_check: all parts ran (outputs in $out)"
