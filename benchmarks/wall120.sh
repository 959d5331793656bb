#!/usr/bin/env bash
# The defaults against the previous recipe pinned by flags, `vae train --time-budget 120` in WALL-clock
# seconds, one after another in one run (run it on a quiet machine), then the colour runs scored in BCE
# nats against the test split's floor. Writes benchmarks/results/wall120_side_by_side.json.
#
#   DATA=/path/with/FashionMNIST EMOJI=/path/to/noto-emoji-64 benchmarks/wall120.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-${VAE_DATA_DIR:?set DATA (or VAE_DATA_DIR) to the folder holding FashionMNIST/raw}}
EMOJI=${EMOJI:-$DATA/noto-emoji-64}
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d)
export VAE_HOME=$WORK/home XDG_CACHE_HOME=$WORK/cache
: > "$WORK/rows.jsonl"
run() {  # tag, then the options of `vae train`
  local tag=$1; shift
  "$PY" -m vaecli train --time-budget 120 --name "$tag" --json -q "$@" > "$WORK/$tag.json"
  printf '{"tag": "%s", "args": "%s", "load": "%s", "summary": %s}\n' "$tag" "$*" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(cat "$WORK/$tag.json")" >> "$WORK/rows.jsonl"
}
run fm_default --data fashion-mnist --data-dir "$DATA"
run fm_conv_pinned --data fashion-mnist --data-dir "$DATA" --arch conv --widths 16,32 --hidden 512 --batch-size 128 --lr 5e-3 --warmup-steps 0
run emoji_default --data "$EMOJI"
run emoji_pinned --data "$EMOJI" --image-size 64 --channels 3 --widths 16,32 --hidden 512 --latent-dim 32 --batch-size 128 --lr 5e-3 --warmup-steps 0 --likelihood bernoulli
ROWS="$WORK/rows.jsonl" EMOJI="$EMOJI" PYTHONPATH=benchmarks "$PY" - <<'PYEOF'
import json, os
import harness
import bench_defaults as bd
rows = [json.loads(line) for line in open(os.environ["ROWS"])]
floor = bd.bce_floor(os.environ["EMOJI"], ["--image-size", "64", "--channels", "3"])
out = {"what": "vae train --time-budget 120 (wall clock), defaults vs the previous recipe pinned by flags, one after another",
       "machine": {**harness.machine_info(), "loadavg_at_each_end": [r["load"] for r in rows]}, "seeds": 1, "emoji_bce_floor": floor, "rows": []}
for r in rows:
    s = r["summary"]
    row = {"tag": r["tag"], "args": r["args"], "steps": s["steps"], "images_per_second": s["images_per_second"], "test_neg_elbo": s["test"]["neg_elbo"]}
    if r["tag"].startswith("emoji"):
        row.update(bd.bce_of_run(r["tag"]))
        row["excess_over_floor"] = row["bce_neg_elbo"] - floor["floor"]
    out["rows"].append(row)
harness.write_json("benchmarks/results/wall120_side_by_side.json", out)
print(json.dumps(out["rows"], indent=1))
PYEOF
