#!/usr/bin/env bash
# Sample grids from N(0, I) and from each fitted prior of one run, made by the tool (docs/priors.md).
#
#   VAE_HOME=RUNS_DIR scripts/prior_pictures.sh RUN PREFIX [SCALE] [FITS_JSON]
#
# writes PREFIX-normal.png, PREFIX-flow.png, PREFIX-gmm.png and PREFIX-gmm-t1.2.png (64 samples each,
# seed 0) and, with FITS_JSON, the two `vae fit-prior --json` results in one file. The run keeps
# the default prior (gmm, components chosen on validation) at the end.
set -euo pipefail
run=$1 prefix=$2 scale=${3:-1} fits=${4:-}
here=$(cd "$(dirname "$0")/.." && pwd)
vae() { PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" -m vaecli "$@"; }
grid() { vae sample --run "$run" -n 64 --nrow 8 --seed 0 --scale "$scale" "$@"; }
mkdir -p "$(dirname "$prefix")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grid --prior normal -o "$prefix-normal.png"
vae fit-prior --run "$run" --kind flow --json > "$tmp/flow.json"
grid --prior fitted -o "$prefix-flow.png"
vae fit-prior --run "$run" --json > "$tmp/gmm.json"
grid --prior fitted -o "$prefix-gmm.png"
grid --prior fitted -t 1.2 -o "$prefix-gmm-t1.2.png"
if [ -n "$fits" ]; then
  "${PYTHON:-python}" -c 'import json, sys; json.dump({"flow": json.load(open(sys.argv[1])), "gmm": json.load(open(sys.argv[2]))}, open(sys.argv[3], "w"), indent=2)' \
    "$tmp/flow.json" "$tmp/gmm.json" "$fits"
fi
