#!/usr/bin/env bash
# Prepares (once) the emulated Raspberry Pi that `pytest -m arm64` runs edgeq in: an arm64 Debian 12
# root under qemu-user, with a venv that already holds edgeq[runtime]'s dependencies for aarch64.
# `.ci/arm64-root.sh run CMD...` runs CMD in the (ready) root, with a clean environment.
# Idempotent and cached outside the clone (CI runs in a fresh clone on the same machine):
#   EDGEQ_ARM64_ROOT (default /var/cache/edgeq-ci/arm64-root), 526 MB with its venv.
# A root appears only complete: it is built in ROOT.partial and renamed at the end.
# Measured (2 cores shared with other work): mmdebstrap 170-402 s, the venv (onnxruntime & co) 127-200 s.
# Needs root (binfmt_misc, chroot). Exits 0 with "arm64: unavailable: why" where the host cannot.
set -euo pipefail
ROOT="${EDGEQ_ARM64_ROOT:-/var/cache/edgeq-ci/arm64-root}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
say() { echo "arm64: $*"; }

if [ "$(id -u)" != 0 ]; then say "unavailable: needs root (binfmt_misc, chroot)"; exit 0; fi
if ! command -v qemu-aarch64-static >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v update-binfmts >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support mmdebstrap >/dev/null \
    || { say "unavailable: could not apt-get install qemu-user-static binfmt-support mmdebstrap"; exit 0; }
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || { say "unavailable: cannot mount binfmt_misc"; exit 0; }
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
if ! grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  say "unavailable: binfmt_misc has no enabled qemu-aarch64 handler"; exit 0
fi

# Runs a command inside ROOT in a private mount namespace, so /proc and /dev never stay mounted.
# /sys is deliberately NOT bound: with the host's /sys, `import onnxruntime` segfaults under qemu 7.2
# (cpuinfo reads the host's topology); without it onnxruntime warns about cpuinfo and runs.
in_root() {
  local root="$1"; shift
  nice -n "${EDGEQ_ARM64_NICE:-19}" unshare --mount --fork -- sh -c '
    root="$1"; shift
    mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" && exec chroot "$root" "$@"' sh "$root" "$@"
}

if [ "${1:-}" = run ]; then
  shift
  [ -f "$ROOT/opt/edgeq-venv/.deps-key" ] || { echo "arm64: no ready root at $ROOT: run $0 first" >&2; exit 2; }
  in_root "$ROOT" /usr/bin/env -i PATH=/opt/edgeq-venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"
  exit $?
fi

if [ ! -f "$ROOT/.edgeq-root-complete" ]; then
  PARTIAL="$ROOT.partial"
  # mmdebstrap mounts /proc, /sys and /dev inside the root; it runs in its own mount namespace (below)
  # so a killed build leaves none behind, and --one-file-system keeps rm out of any that still are.
  findmnt -rn -o TARGET | grep "^$PARTIAL/" | sort -r | xargs -r -n1 umount -l || true
  rm -rf --one-file-system "$PARTIAL"; mkdir -p "$(dirname "$ROOT")"
  start=$(date +%s)
  say "building the arm64 Debian root in $PARTIAL (mmdebstrap; 3-7 min)"
  nice -n 19 unshare --mount --fork -- mmdebstrap --quiet --arch=arm64 --variant=apt \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --include=python3,python3-venv,python3-pip,libsndfile1,ca-certificates \
    bookworm "$PARTIAL"
  say "root built in $(( $(date +%s) - start ))s"
  # pip inside the root reaches the registries only with the host's pip configuration and CA bundle.
  mkdir -p "$PARTIAL/etc/pip" "$PARTIAL/root/.config/pip"
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$PARTIAL/etc/pip.conf"
  for conf in "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
    # Locations that are folders on this host (find-links, file:// indexes) do not exist in the root:
    # keep only the network ones, or pip warns about each missing folder for every package.
    [ -f "$conf" ] && python3 - "$conf" > "$PARTIAL/root/.config/pip/pip.conf" <<'PY' && break
import configparser, sys
c = configparser.ConfigParser()
c.read(sys.argv[1])
for section in c.sections():
    for key in ("find-links", "index-url", "extra-index-url"):
        if key in c[section]:
            urls = [u for u in c[section][key].split() if u.startswith(("http://", "https://"))]
            if urls:
                c[section][key] = " ".join(urls)
            else:
                del c[section][key]
c.write(sys.stdout)
PY
  done
  cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
  if [ -n "$cert" ] && [ -f "$cert" ]; then
    mkdir -p "$PARTIAL$(dirname "$cert")"; cp "$cert" "$PARTIAL$cert"
  fi
  touch "$PARTIAL/.edgeq-root-complete"
  mv "$PARTIAL" "$ROOT"
fi

# The venv with edgeq[runtime]'s aarch64 dependencies (installed under emulation).
# Rebuilt when pyproject.toml's dependencies change; the test then installs the fresh wheel into it.
deps_key="$(python3 - "$REPO/pyproject.toml" <<'PY'
import hashlib, sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(hashlib.sha256(repr((p["dependencies"], p["optional-dependencies"]["runtime"])).encode()).hexdigest()[:16])
PY
)"
if [ "$(cat "$ROOT/opt/edgeq-venv/.deps-key" 2>/dev/null)" != "$deps_key" ]; then
  start=$(date +%s)
  say "installing edgeq[runtime]'s dependencies for aarch64 into $ROOT/opt/edgeq-venv (2-4 min)"
  python3 - "$REPO/pyproject.toml" > "$ROOT/tmp/edgeq-requirements.txt" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["runtime"]))
PY
  # The key is written last: a venv without it (cut install) is removed and built again.
  rm -rf "$ROOT/opt/edgeq-venv"
  # A clean environment: the host's PIP_FIND_LINKS and file:// indexes name folders the root lacks;
  # network settings pass through (the CA bundle and pip.conf were copied in above).
  pass_env=()
  for var in PIP_CERT PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST http_proxy https_proxy no_proxy; do
    val="${!var:-}"
    case "$val" in ""|/*|file:*) ;; *) pass_env+=("$var=$val") ;; esac
  done
  [ -n "${PIP_CERT:-}" ] && [ -f "$ROOT$PIP_CERT" ] && pass_env+=("PIP_CERT=$PIP_CERT")
  in_root "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 "${pass_env[@]}" sh -c '
    python3 -m venv /opt/edgeq-venv &&
    /opt/edgeq-venv/bin/pip install -q --disable-pip-version-check -r /tmp/edgeq-requirements.txt'
  echo "$deps_key" > "$ROOT/opt/edgeq-venv/.deps-key"
  say "venv ready in $(( $(date +%s) - start ))s"
fi
say "ready: $ROOT ($(du -sh "$ROOT" | cut -f1))"
