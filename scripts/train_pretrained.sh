#!/usr/bin/env bash
# Train the pretrained run shipped inside the package: the Fashion-MNIST default, 10 minutes of
# `vae train --time-budget 600`, then its weights in half precision into src/vaecli/assets/pretrained/.
#   bash scripts/train_pretrained.sh DATA_DIR   (DATA_DIR holds FashionMNIST/raw)
set -euo pipefail
cd "$(dirname "$0")/.."
export VAE_HOME=${VAE_HOME:-$(mktemp -d)}
.venv/bin/vae train --data fashion-mnist --data-dir "$1" --time-budget 600 --name pretrained-fashion-mnist --overwrite -q
.venv/bin/python scripts/make_pretrained.py "$VAE_HOME/pretrained-fashion-mnist" fashion-mnist
