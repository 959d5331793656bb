#!/usr/bin/env bash
# One-shot GPU check: run from the repository root on a machine with an NVIDIA GPU and
# no network. Finishes in under 8 minutes; every step has its own timeout and a step that would
# overrun the total is skipped (and says so in the JSON).
#
#   VAE_DATA_DIR=/path/with/FashionMNIST scripts/gpu_check.sh          # default data: ../shared/data
#   GPU_CHECK_DEVICE=cpu scripts/gpu_check.sh                           # dry run on a CPU, tiny sizes
#
# It: (1) finds a Python with torch + CUDA (./.venv, then python3), else makes ./.venv and installs
# torch==2.14.1, torchvision==0.29.1 and `pip install -e '.[test]'` from the configured package index;
# (2) runs tests/test_cuda.py, then the whole suite (-m 'not slow'); (3) trains the default model on
# Fashion-MNIST at batch 128 / 1024 / 4096 in fp32 and bf16 for the same --time-budget and records
# images/s, time per epoch and test -ELBO (equal wall time); (4) compares `vae eval-kl` on the CPU
# and on the GPU (within 0.5 nat); (5) times `--arch seed` (the seed's recipe) and projects the
# 200-epoch seed experiment 1. One JSON: benchmarks/results/gpu_check-<host>-<time>.json, and $OUT.
#
# Knobs: GPU_CHECK_PYTHON (a Python to try first), GPU_CHECK_BUDGET (seconds of training per batch/precision, default 12), GPU_CHECK_TOTAL
# (seconds for everything, default 470), GPU_CHECK_SUITE (1 = run the whole suite, default 1 on a GPU).
set -uo pipefail

cd "$(dirname "$0")/.."
DEV=${GPU_CHECK_DEVICE:-cuda}
DRY=0; [ "$DEV" = cpu ] && DRY=1
BUDGET=${GPU_CHECK_BUDGET:-$([ $DRY = 1 ] && echo 2 || echo 12)}
TOTAL=${GPU_CHECK_TOTAL:-470}
SUITE=${GPU_CHECK_SUITE:-$([ $DRY = 1 ] && echo 0 || echo 1)}
DATA_DIR=${VAE_DATA_DIR:-../shared/data}
[ -d "$DATA_DIR/FashionMNIST/raw" ] || { [ -d shared/data/FashionMNIST/raw ] && DATA_DIR=shared/data; }
DATA=(--data fashion-mnist --data-dir "$DATA_DIR")
if [ $DRY = 1 ]; then DATA=(--data fashion-mnist-mini); fi
WORK=$(mktemp -d -t gpu-check-XXXXXX)
export VAE_HOME="$WORK/runs" PYTHONUNBUFFERED=1
START=$SECONDS
log() { echo "[gpu_check $((SECONDS - START))s] $*" >&2; }
left() { echo $((TOTAL - (SECONDS - START))); }
# step NAME TIMEOUT CMD...: run CMD with a timeout no longer than what is left; rc and wall into $WORK/NAME.step
step() {
    local name=$1 limit=$2; shift 2
    local avail; avail=$(left)
    if [ "$avail" -lt 5 ]; then log "skip $name: out of time"; echo '{"skipped": "out of time"}' > "$WORK/$name.step"; return 99; fi
    [ "$limit" -gt "$avail" ] && limit=$avail
    log "$name (timeout ${limit}s): $*"
    local t0=$SECONDS rc
    timeout -k 5 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"; rc=$?
    echo "{\"rc\": $rc, \"seconds\": $((SECONDS - t0)), \"timed_out\": $([ $rc = 124 ] && echo true || echo false)}" > "$WORK/$name.step"
    [ $rc = 0 ] || log "$name: exit $rc: $(tail -n 3 "$WORK/$name.err" | tr '\n' ' ')"
    return $rc
}

# ---- 1. a Python with torch (+ CUDA unless dry)
probe="import torch, torchvision, pytest, typer; assert torch.cuda.is_available() or '$DEV' == 'cpu'"
PY=""
for cand in ${GPU_CHECK_PYTHON:-} .venv/bin/python python3; do
    if command -v "$cand" >/dev/null && PYTHONPATH=src "$cand" -c "$probe" 2>/dev/null; then PY=$cand; break; fi
done
if [ -z "$PY" ]; then
    log "no usable Python: making .venv and installing torch==2.14.1 torchvision==0.29.1 and .[test]"
    python3 -m venv .venv && step install 200 bash -c \
        ".venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 && .venv/bin/pip install -q -e '.[test]'" && PY=.venv/bin/python
    [ -n "$PY" ] && PYTHONPATH=src "$PY" -c "$probe" || { log "setup failed (see $WORK/install.err)"; PY=""; }
fi
[ -n "$PY" ] || { cat "$WORK/install.err" >&2 2>/dev/null; exit 1; }
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
VAE=("$PY" -m vaecli)
"$PY" benchmarks/harness.py machine > "$WORK/machine.json"  # the machine block every benchmark records, GPU included
log "python $PY: $(cat "$WORK/machine.json")"

# ---- 2. tests
step test_cuda 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
if [ "$SUITE" = 1 ]; then
    step suite 150 "$PY" -m pytest -q -x -p no:cacheprovider -m "not slow" tests
fi

# ---- 3. batch x precision at equal wall time
lr_for() { "$PY" -c "print(min(1e-2, 5e-3 * ($1 / 128) ** 0.5))"; }
BATCHES=(128 1024 4096); [ $DRY = 1 ] && BATCHES=(64 256)
for b in "${BATCHES[@]}"; do
    for p in fp32 bf16; do
        n=b$b-$p
        step "$n" $((BUDGET + 60)) "${VAE[@]}" train "${DATA[@]}" --device "$DEV" --precision "$p" --batch-size "$b" \
            --lr "$(lr_for "$b")" --lr-schedule cosine --warmup-steps 100 --time-budget "$BUDGET" --name "$n" --overwrite --json -q
        cp "$WORK/$n.out" "$WORK/$n.json" 2>/dev/null
    done
done

# ---- 4. eval-kl on the CPU and the GPU, same weights
ref=b${BATCHES[1]}-fp32
step evalkl_cpu 60 "${VAE[@]}" eval-kl --run "$ref" --device cpu --json
step evalkl_dev 60 "${VAE[@]}" eval-kl --run "$ref" --device "$DEV" --json

# ---- 5. the seed's architecture and recipe: 2 epochs (a fraction on the dry run), projected to 200
SEED_ARGS=(--epochs 2); [ $DRY = 1 ] && SEED_ARGS=(--epochs 1 --max-steps 20)
step seed 120 "${VAE[@]}" train "${DATA[@]}" --device "$DEV" --arch seed "${SEED_ARGS[@]}" --name seed --overwrite --json -q

# ---- the one JSON
mkdir -p benchmarks/results
RESULT=benchmarks/results/gpu_check-$(hostname -s 2>/dev/null || echo host)-$(date -u +%Y%m%dT%H%M%S)$([ $DRY = 1 ] && echo -dry).json
"$PY" - "$WORK" "$RESULT" "$DEV" "$BUDGET" "$((SECONDS - START))" "${BATCHES[*]}" <<'EOF'
import json, sys
from pathlib import Path
work, result, dev, budget, total, batches = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), sys.argv[6].split()

def load(name, ext):
    try:
        text = (work / f"{name}.{ext}").read_text()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return json.loads(text) if ext == "step" else json.loads(text[text.index("{"):])
    except (OSError, ValueError):
        return None

def tail(name, n=5):
    try:
        return (work / f"{name}.out").read_text().strip().splitlines()[-n:] + (work / f"{name}.err").read_text().strip().splitlines()[-n:]
    except OSError:
        return []

out = {"device": dev, "dry_run": dev == "cpu", "budget_seconds": budget, "machine": load("machine", "json"),
       "tests": {k: {**(load(k, "step") or {}), "tail": tail(k)} for k in ("test_cuda", "suite") if (work / f"{k}.step").exists()},
       "runs": {}, "note": "test -ELBO at equal wall time (--time-budget, evaluation not counted); lr = min(1e-2, 5e-3 * sqrt(batch / 128)), warm-up 100 steps"}
for b in batches:
    for p in ("fp32", "bf16"):
        n = f"b{b}-{p}"
        s = load(n, "json") or {}
        done = s.get("epochs_done") or (s.get("epochs") or 0)
        summary = {}
        try:
            summary = json.loads((work / "runs" / n / "summary.json").read_text())
        except (OSError, ValueError):
            pass
        done = summary.get("epochs_done", done)
        ts = summary.get("train_seconds")
        out["runs"][n] = {"batch_size": int(b), "precision": p, "step": load(n, "step"), "test_neg_elbo": (s.get("test") or {}).get("neg_elbo"),
                          "images_per_second": s.get("images_per_second"), "epochs_done": done, "steps": s.get("steps"),
                          "seconds_per_epoch": round(ts / done, 3) if ts and done else None, "runtime": summary.get("runtime")}
c, g = load("evalkl_cpu", "out") or {}, load("evalkl_dev", "out") or {}
def pick(d, k):
    v = d.get(k)
    return v if isinstance(v, (int, float)) else None
kc, kg = pick(c, "kl") or pick(c, "total_kl"), pick(g, "kl") or pick(g, "total_kl")
ec, eg = pick(c, "neg_elbo"), pick(g, "neg_elbo")
out["eval_kl"] = {"cpu": c, "device": g, "kl_difference": None if kc is None or kg is None else abs(kc - kg),
                  "neg_elbo_difference": None if ec is None or eg is None else abs(ec - eg)}
out["eval_kl"]["agree_within_0.5_nat"] = all(v is not None and v <= 0.5 for v in (out["eval_kl"]["kl_difference"], out["eval_kl"]["neg_elbo_difference"]))
seed = load("seed", "out") or {}
try:
    ss = json.loads((work / "runs" / "seed" / "summary.json").read_text())
except (OSError, ValueError):
    ss = {}
done = ss.get("epochs_done") or 0
out["seed_experiment_1"] = {"step": load("seed", "step"), "images_per_second": seed.get("images_per_second"), "epochs_done": done,
                            "seconds": ss.get("seconds"), "train_seconds": ss.get("train_seconds"),
                            "projected_200_epochs_seconds": round(200 * ss["seconds"] / done, 1) if done and ss.get("seconds") else None,
                            "note": "--arch seed (batch 128, Adam 1e-3 constant), wall seconds incl. per-epoch evaluation, x 200 / epochs done"}
out["total_seconds"] = total
best = [r for r in out["runs"].values() if r["test_neg_elbo"] is not None]
if best:
    r = min(best, key=lambda r: r["test_neg_elbo"])
    out["best_at_equal_wall_time"] = {"batch_size": r["batch_size"], "precision": r["precision"], "test_neg_elbo": r["test_neg_elbo"]}
text = json.dumps(out, indent=2)
Path(result).write_text(text + "\n")
print(text)
EOF
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$RESULT" "$OUT/" && tar czf "$OUT/gpu_check_logs.tgz" -C "$WORK" --exclude=runs . ; fi
log "done in $((SECONDS - START))s: $RESULT"
