#!/usr/bin/env bash
# Reproduce the seed document's three experiments on the real Fashion-MNIST, the binarised
# likelihood, and MIG on the shapes data, one run after another, and draw the figures of
# docs/experiments.md into $OUT. Every number and figure comes from the tool itself.
#
#   VAE_DATA_DIR=/path/with/FashionMNIST scripts/reproduce_seed.sh
#
# Knobs (environment): EPOCHS (the three experiments, default 4), ANNEAL (exp2's ramp, default 1),
# BIN_EPOCHS (the binarised run, default 46), SHAPES_EPOCHS (default 12), IW_K (importance samples
# over the whole test set, default 200), IW_K_BIG and IW_LIMIT (more samples on the first test
# images, default 2000 on 1000), OUT (figures, default docs/images/experiments),
# VAE (the command, default `vae`), SHAPES_DATA_DIR (where the shapes cache goes, default the data
# dir). The seed trained 200 epochs with a 30-epoch ramp.
set -euo pipefail

EPOCHS=${EPOCHS:-4}
ANNEAL=${ANNEAL:-1}
SHAPES_EPOCHS=${SHAPES_EPOCHS:-12}
BIN_EPOCHS=${BIN_EPOCHS:-46}
IW_K=${IW_K:-200}
IW_K_BIG=${IW_K_BIG:-2000}
IW_LIMIT=${IW_LIMIT:-1000}
OUT=${OUT:-docs/images/experiments}
VAE=${VAE:-vae}
PY=${PY:-python}
SHAPES_DIR=(${SHAPES_DATA_DIR:+--data-dir "$SHAPES_DATA_DIR"})
COMMON=(--precision auto --overwrite -q)
# The seed's optimiser (Adam 1e-3, batch 128, constant rate) on the conv arch at widths 32, 64, pinned so
# that the numbers of docs/experiments.md do not move when the defaults of `vae train` change.
SEED_RECIPE=(--widths 32,64 --hidden 512 --batch-size 128 --lr 1e-3 --lr-schedule constant)
mkdir -p "$OUT" "$OUT/json"

train() {  # name, then the options of `vae train`; the --json summary goes to $OUT/json/NAME-train.json
    local name=$1; shift
    echo "== train $name: $*" >&2
    $VAE train --name "$name" "${COMMON[@]}" --json "$@" > "$OUT/json/$name-train.json"
}

# --- the seed's three experiments (Fashion-MNIST, conv arch, z = 32, Adam 1e-3, batch 128)
train exp1-beta1 "${SEED_RECIPE[@]}" --epochs "$EPOCHS" --beta 1
train exp2-anneal "${SEED_RECIPE[@]}" --epochs "$EPOCHS" --beta 1 --anneal "$ANNEAL"
train exp3-beta4 "${SEED_RECIPE[@]}" --epochs "$EPOCHS" --beta 4

# --- a true likelihood: the default conv VAE, dynamically binarised training (46 epochs: what
# --time-budget 1200 gave on one thread of our CPU), importance-weighted NLL on the fixed binarised test set
train fm-bin --binarize --epochs "$BIN_EPOCHS"
$VAE eval-kl --run fm-bin --iw-samples "$IW_K" --json > "$OUT/json/fm-bin-iw$IW_K-full.json"
$VAE eval-kl --run fm-bin --iw-samples "$IW_K" --limit "$IW_LIMIT" --json > "$OUT/json/fm-bin-iw$IW_K-$IW_LIMIT.json"
$VAE eval-kl --run fm-bin --iw-samples "$IW_K_BIG" --limit "$IW_LIMIT" --json > "$OUT/json/fm-bin-iw$IW_K_BIG-$IW_LIMIT.json"

# --- disentanglement with ground truth: a beta sweep at the same budget (12 epochs), two seeds
for seed in 0 1; do
    for beta in 1 4 8 16; do
        n=shapes-b$beta-s$seed
        train "$n" --data shapes "${SHAPES_DIR[@]}" --latent-dim 10 --epochs "$SHAPES_EPOCHS" --beta "$beta" --seed "$seed"
        $VAE eval-disentangle --run "$n" --json > "$OUT/json/$n-disentangle.json"
        $VAE eval-disentangle --run "$n" > "$OUT/json/$n-disentangle.txt"
    done
done
for extra in "shapes-b4-s0-36ep:--beta 4 --epochs $((3 * SHAPES_EPOCHS))" "shapes-tc8-s0:--beta 1 --tc-beta 8 --epochs $SHAPES_EPOCHS"; do
    n=${extra%%:*}
    # shellcheck disable=SC2086
    train "$n" --data shapes "${SHAPES_DIR[@]}" --latent-dim 10 --seed 0 ${extra#*:}
    $VAE eval-disentangle --run "$n" --json > "$OUT/json/$n-disentangle.json"
    $VAE eval-disentangle --run "$n" > "$OUT/json/$n-disentangle.txt"
done

# --- figures
runs_dir=$($PY -c 'from vaecli.paths import runs_dir; print(runs_dir())')
for run in exp1-beta1 exp2-anneal exp3-beta4; do
    cp "$runs_dir/$run/loss.png" "$OUT/$run-loss.png"
    $VAE sample --run "$run" -n 64 --scale 2 -o "$OUT/$run-samples.png"
    $VAE interpolate --run "$run" --index 0 --index 1 --steps 8 --scale 2 -o "$OUT/$run-interpolate.png"
done
$VAE eval-kl --run exp1-beta1 --json > "$OUT/json/exp1-beta1-eval-kl.json"
$VAE eval-kl --run exp3-beta4 --json > "$OUT/json/exp3-beta4-eval-kl.json"
top_dims() {  # the 8 dimensions with the most KL, as --dim options
    $PY -c 'import json, sys; k = json.load(open(sys.argv[1]))["per_dim_kl"]
print(" ".join(f"--dim {j}" for j in sorted(range(len(k)), key=lambda j: -k[j])[:8]))' "$1"
}
# shellcheck disable=SC2046
$VAE traverse --run exp1-beta1 $(top_dims "$OUT/json/exp1-beta1-eval-kl.json") -o "$OUT/exp1-beta1-traverse.png"
# shellcheck disable=SC2046
$VAE traverse --run exp3-beta4 $(top_dims "$OUT/json/exp3-beta4-eval-kl.json") -o "$OUT/exp3-beta4-traverse.png"
for beta in 1 4 16; do
    $VAE traverse --run "shapes-b$beta-s0" --index 0 --scale 2 -o "$OUT/shapes-b$beta-traverse.png"
done
$PY scripts/kl_chart.py exp1-beta1 exp2-anneal exp3-beta4 -o "$OUT/kl-per-epoch.png" \
    --label exp1-beta1="beta = 1 (exp1)" --label exp2-anneal="beta 0 -> 1 (exp2)" --label exp3-beta4="beta = 4 (exp3)"
echo "figures in $OUT" >&2
