#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian bookworm machine:
# Mosquitto, PostgreSQL 15 + PostGIS, TimescaleDB (built from Debian trixie's source
# package, cached), Debian's Chromium. Idempotent: each step is skipped when done.
set -euo pipefail
log() { printf '[install-services] %s\n' "$*" >&2; }
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need_pkgs=()
for p in mosquitto postgresql-15 postgresql-15-postgis-3 postgresql-server-dev-15 \
         cmake gcc make chromium xz-utils fonts-dejavu-core; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "apt-get install ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

PG_BIN=/usr/lib/postgresql/15/bin
if [ ! -f /usr/lib/postgresql/15/lib/timescaledb.so ]; then
  log "building TimescaleDB (Apache-2 part) from Debian trixie's source package"
  work=$(mktemp -d)
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  mkdir -p "$work/lists/partial" "$work/etc"
  echo "deb-src $mirror trixie main" > "$work/etc/trixie-src.list"
  apt_opts=(-o Dir::Etc::SourceList="$work/etc/trixie-src.list" -o Dir::Etc::SourceParts=/dev/null
            -o Dir::State::Lists="$work/lists" -o APT::Get::List-Cleanup=0)
  $SUDO apt-get "${apt_opts[@]}" update -qq
  (cd "$work" && apt-get "${apt_opts[@]}" source --download-only timescaledb >/dev/null)
  tarball=$(ls "$work"/timescaledb_*.orig.tar.* | head -n 1)
  mkdir -p "$work/src" && tar -xf "$tarball" -C "$work/src" --strip-components=1
  (cd "$work/src" && ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DAPACHE_ONLY=1 \
      -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF -DPG_CONFIG=$PG_BIN/pg_config >/dev/null \
    && make -C build -j2 >/dev/null && $SUDO make -C build install >/dev/null)
  rm -rf "$work"
fi
log "services installed: $(mosquitto -h 2>/dev/null | head -n1 | tr -d '\n'); $($PG_BIN/postgres --version); timescaledb $(ls /usr/lib/postgresql/15/lib/timescaledb-2*.so 2>/dev/null | sed 's/.*timescaledb-//;s/\.so//' | head -n1)"
