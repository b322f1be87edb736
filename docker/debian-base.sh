#!/bin/sh
# A stand-in for python:3.11-slim-bookworm made from Debian's packages, for machines that reach
# Debian's archive but no image registry (the tests' Docker lane uses it when a pull fails):
# Debian 12 with its Python 3.11, pip and CA certificates, `python` and `pip` on PATH, and pip
# allowed to install into the system Python as it is in the official image.
#
#   docker/debian-base.sh TAG [CACHE_DIR]
#
# Needs root and debootstrap. The root filesystem is kept as a tarball in CACHE_DIR (default
# ~/.cache/mobilesd), named after this script's checksum, so a later run only imports it.
set -eu

tag=${1:?usage: docker/debian-base.sh TAG [CACHE_DIR]}
cache=${2:-${XDG_CACHE_HOME:-$HOME/.cache}/mobilesd}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)
sum=$(sha256sum "$here/debian-base.sh" | cut -c1-12)
tarball="$cache/debian-base-bookworm-$sum.tar"

if [ ! -s "$tarball" ]; then
    [ "$(id -u)" = 0 ] || { echo "debian-base.sh: debootstrap needs root" >&2; exit 2; }
    command -v debootstrap >/dev/null || { echo "debian-base.sh: apt-get install debootstrap" >&2; exit 2; }
    mkdir -p "$cache"
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "debian-base.sh: debootstrap bookworm from $mirror (about a minute) ..." >&2
    debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates \
        bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    # As in the official image: pip may install into the system Python (no PEP 668 marker),
    # and no package lists, caches or docs are shipped.
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/* \
        "$root"/var/log/* "$root"/tmp/*
    chmod 0755 "$root"  # mktemp made it 0700: it becomes the image's /
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    # Tarballs of earlier versions of this script are of no use any more.
    find "$cache" -maxdepth 1 -name 'debian-base-bookworm-*.tar' ! -name "${tarball##*/}" -delete
fi

docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$tag" >/dev/null
echo "$tag"
