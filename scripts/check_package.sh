#!/usr/bin/env bash
# Packaging check (CI runs it): build the sdist and the wheel, `twine check --strict` them, install the
# wheel into a fresh venv and run `vae --help`, a tiny train and the shipped pretrained model from it.
# The fresh venv borrows the dependencies (torch...) of the dev venv through a .pth file, so torch is
# not installed twice; vaecli itself comes from the wheel only (checked).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$PY" -m build --outdir "$out/dist" . >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
"$PY" -m twine check --strict "$out"/dist/*
base=$("$PY" -c 'import sys; print(sys._base_executable)')
"$base" -m venv "$out/venv"
deps=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
own=$("$out/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" >"$own/_deps_of_the_dev_venv.pth"
"$out/venv/bin/python" -m pip install -q --no-deps --no-index "$out"/dist/*.whl
cd "$out"
where=$(venv/bin/python -c 'import vaecli; print(vaecli.__file__)')
case "$where" in "$own"/*) ;; *) echo "vaecli was imported from $where, not from the wheel" >&2; exit 1 ;; esac
export VAE_HOME="$out/home" VAE_CACHE_DIR="$out/cache"
venv/bin/vae --help >/dev/null
venv/bin/vae train --data fashion-mnist-mini --max-steps 3 --name wheel -q >/dev/null
venv/bin/vae sample --run wheel -n 4 -o wheel.png
if venv/bin/vae runs --json | grep -q 'pretrained:'; then
  venv/bin/vae sample --run pretrained:fashion-mnist -n 16 -o pretrained.png
fi
echo "package check: sdist and wheel built, twine check passed, the wheel installs and trains"
