#!/bin/bash
# Side by side on one CPU machine: one process (1 and 2 intra-op threads) vs torchrun with 2 gloo
# ranks (1 thread each), 150 steps of the default conv model on real Fashion-MNIST, fp32.
# Usage: VAE_DATA_DIR=/path/to/data benchmarks/ddp_cpu.sh   (prints img/s and seconds per run)
set -eu
export VAE_HOME=${VAE_HOME:-/tmp/vae-ddp-bench}
PY=${PY:-python}
report() { $PY -c "import json,sys; d=json.load(sys.stdin); print('$1', d['images_per_second'], 'img/s', d['seconds'], 's')"; }
common=(--data fashion-mnist --max-steps 150 --device cpu --overwrite --json -q)
for rep in 1 2; do
  OMP_NUM_THREADS=1 $PY -m vaecli train "${common[@]}" --batch-size 128 --name s1-$rep 2>/dev/null | report "1 process, 1 thread,  batch 128      "
  OMP_NUM_THREADS=2 $PY -m vaecli train "${common[@]}" --batch-size 128 --name s2-$rep 2>/dev/null | report "1 process, 2 threads, batch 128      "
  OMP_NUM_THREADS=1 $PY -m torch.distributed.run --standalone --nproc-per-node 2 -m vaecli train "${common[@]}" --batch-size 64 --name d64-$rep 2>/dev/null | report "2 ranks x 64  (effective 128)        "
  OMP_NUM_THREADS=1 $PY -m torch.distributed.run --standalone --nproc-per-node 2 -m vaecli train "${common[@]}" --batch-size 128 --name d128-$rep 2>/dev/null | report "2 ranks x 128 (effective 256)        "
done
