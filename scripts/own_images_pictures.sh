#!/usr/bin/env bash
# The pictures of docs/own-images.md, made by the tool from one trained colour run and its held-out
# files (the folder bench_own_images.py --keep leaves: every 10th file, never trained on).
#
#   VAE_HOME=... scripts/own_images_pictures.sh RUN HELD_DIR PREFIX
#
# writes PREFIX-reconstructions.png (16 held-out files above their reconstructions), PREFIX-samples.png
# (32 samples, seed 0, from what `vae sample` draws: the run's fitted prior when it has one; PRIOR=normal
# for N(0, I)) and PREFIX-traverse.png (the first held-out file's posterior mean, the 6 latent
# dimensions of highest KL, -3 to +3 prior sigmas). A hierarchical run (--arch hvae): GROUP_TEMPERATURES="0 1"
# also writes PREFIX-samples-tT.png for each group temperature T (the same top latents, seed 0).
set -euo pipefail
run=$1 held=$2 prefix=$3
here=$(cd "$(dirname "$0")/.." && pwd)
vae() { PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" -m vaecli "$@"; }
mkdir -p "$(dirname "$prefix")"
mapfile -t files < <(find -L "$held" -type f -name '*.png' | sort | head -n 16)
vae reconstruct --run "$run" "${files[@]}" --nrow 8 -o "$prefix-reconstructions.png"
vae sample --run "$run" --prior "${PRIOR:-auto}" -n 32 --nrow 8 --seed 0 -o "$prefix-samples.png"
for t in ${GROUP_TEMPERATURES:-}; do
  vae sample --run "$run" --prior "${PRIOR:-auto}" -n 32 --nrow 8 --seed 0 --group-temperature "$t" -o "$prefix-samples-t$t.png"
done
vae traverse --run "$run" --image "${files[0]}" --top 6 --steps 9 -o "$prefix-traverse.png"
