#!/usr/bin/env bash
# Installs the Debian packages the tests need when they are missing (idempotent; needs root or sudo).
set -euo pipefail
pkgs=(docker-registry skopeo golang-go golang-github-containerd-stargz-snapshotter-dev apache2-utils zstd debootstrap
      chromium chromium-driver git make postgresql redis-server libdeflate0
      erofs-utils containerd runc stargz-snapshotter
      # soci-verify/soci-build (upstream soci-snapshotter, tests/support/soci_tools.py): cgo + GOPATH packages
      zlib1g-dev patch golang-github-containerd-containerd-dev golang-github-coreos-bbolt-dev
      golang-github-golang-groupcache-dev golang-github-klauspost-compress-dev golang-github-opencontainers-go-digest-dev
      golang-github-prometheus-client-golang-dev golang-github-prometheus-client-model-dev golang-github-rs-xid-dev
      golang-github-sirupsen-logrus-dev golang-golang-x-sync-dev)
# erofs-utils: fsck.erofs --extract checks every nydus bootstrap; debootstrap: the Debian rootfs.
# containerd, runc, stargz-snapshotter (ctr-remote): the real lazy pull (tests/e2e/test_lazy_pull.py), which also
# builds its snapshotter daemon from golang-github-containerd-stargz-snapshotter-dev; `make bench` uses ctr-remote
# as the reference converter. (`system-deps.sh bench` is accepted and needs nothing more.)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
