#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian 12 machine (run as root or with sudo).
#   scripts/setup.sh          what serving needs
#   scripts/setup.sh --test   plus what the test suite and training data need
#                             (Chromium, the TTS engines and speech packages)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1
SUDO=""
[[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
PY="${PYTHON:-python3}"

pkgs=(ca-certificates)
if [[ $want_test -eq 1 ]]; then
  pkgs+=(chromium sox
         flite festival festlex-cmu festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
         espeak-ng mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 mbrola-de2 mbrola-fr4 mbrola-nl2
         libttspico-utils asterisk-core-sounds-en-g722 asterisk-core-sounds-en festvox-ru)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  # MBROLA lives in contrib, the voices and pico in non-free.
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    $SUDO sed -i 's/^Components: main$/Components: main contrib non-free/' /etc/apt/sources.list.d/debian.sources
  fi
  if [[ -f /etc/apt/sources.list ]]; then
    $SUDO sed -i -E 's/^(deb .* main)$/\1 contrib non-free/' /etc/apt/sources.list
  fi
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# A CPU build of torch: the registry's default build pulls several GB of CUDA packages.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q torch
extras="dev"
[[ $want_test -eq 1 ]] && extras="dev,data"
"$PY" -m pip install -q -e ".[$extras]"
"$PY" scripts/fetch_models.py
echo "setup: done"
