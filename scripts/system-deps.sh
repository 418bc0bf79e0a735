#!/usr/bin/env bash
# Debian packages for headless MuJoCo rendering (Reacher, Cube): EGL on Mesa or NVIDIA,
# and OSMesa as the fallback (see lewm.envs.gl); g++ for plan.compile on CPU (inductor
# compiles C++ kernels). Installs only what is missing, so a
# prepared machine is not touched and needs no root.
set -euo pipefail
PACKAGES=(libegl1 libegl-mesa0 libgl1 libopengl0 libgl1-mesa-dri libosmesa6 g++)

if ! command -v dpkg >/dev/null 2>&1; then
  echo "system-deps: not a Debian system; install EGL or OSMesa for MuJoCo yourself" >&2
  exit 0
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    echo "system-deps: missing ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" \
  || { "${SUDO[@]}" apt-get update -q && \
       "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; }
