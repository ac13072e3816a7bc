#!/usr/bin/env bash
# Installs the Debian packages the tests need when they are missing (idempotent; needs root or sudo).
set -euo pipefail
pkgs=(docker-registry skopeo golang-go golang-github-containerd-stargz-snapshotter-dev apache2-utils zstd debootstrap
      chromium chromium-driver git make postgresql redis-server libdeflate0
      erofs-utils)  # erofs-utils: fsck.erofs --extract checks every nydus bootstrap; debootstrap: the Debian rootfs
# `system-deps.sh bench`: what `make bench` needs on top (the reference converter)
[ "${1:-}" = "bench" ] && pkgs+=(stargz-snapshotter containerd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
