#!/usr/bin/env bash
# Install edge-gateway on an edge box (Debian 12, run as root from a checkout of this repo):
#   venv in /opt/edge-gateway/venv (pinned by systemd/constraints.txt), `edge-gateway` on the
#   PATH (/usr/local/bin), config in /etc/edge-gateway/, buffer in /var/lib/edge-gateway/, a
#   system user, the systemd unit.
# Safe to run again: an existing config, password file or client key is never overwritten.
#
#   EXTRAS=hid             also install the USB HID (keyboard-wedge) driver's extra (evdev)
#   WHEELHOUSE=/path       install from wheels built elsewhere, without the internet
#                          (systemd/README.md, "A box without internet")
#   PREFIX, ETC, UNIT_DIR, BIN_DIR, SERVICE_USER   where things go, who runs the service
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/opt/edge-gateway}
ETC=${ETC:-/etc/edge-gateway}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
BIN_DIR=${BIN_DIR:-/usr/local/bin}
SERVICE_USER=${SERVICE_USER:-edge-gateway}
WHEELHOUSE=${WHEELHOUSE:-}

if ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "edge-gateway needs Python 3.11 or newer as python3" >&2; exit 1
fi
# Debian ships venv (and the ensurepip it needs) apart from python3.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if [ -n "$WHEELHOUSE" ]; then
        echo "python3-venv is missing: install it from your local Debian mirror first" >&2; exit 1
    fi
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/edge-gateway --no-create-home \
        --shell /usr/sbin/nologin --groups dialout,input "$SERVICE_USER"
fi
python3 -m venv "$PREFIX/venv"
PIP=("$PREFIX/venv/bin/pip" install -q)
if [ -n "$WHEELHOUSE" ]; then
    PIP+=(--no-index --find-links "$WHEELHOUSE")
else
    "$PREFIX/venv/bin/pip" install -q --upgrade pip
fi
# EXTRAS=hid: evdev is compiled on install unless the wheelhouse has its wheel (a C compiler,
# python3-dev and the kernel headers: apt-get install gcc python3-dev linux-libc-dev).
# From a wheelhouse, this project is one of its wheels (built with the rest, no build step here).
if [ -n "$WHEELHOUSE" ]; then TARGET=edge-gateway; else TARGET=.; fi
"${PIP[@]}" --constraint systemd/constraints.txt "$TARGET${EXTRAS:+[$EXTRAS]}"
install -m 0644 README.md "$PREFIX/README.md"
install -d -m 0755 "$BIN_DIR"
ln -sfn "$PREFIX/venv/bin/edge-gateway" "$BIN_DIR/edge-gateway"

install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC"
if [ ! -e "$ETC/gateway.toml" ]; then
    install -m 0640 -o root -g "$SERVICE_USER" config/gateway.example.toml "$ETC/gateway.toml"
    echo "edit $ETC/gateway.toml, then: systemctl enable --now edge-gateway" >&2
fi
# Both are sources of the unit's LoadCredential= (read by systemd as root): 0600 root, and
# present even when unused (no password, no client certificate), or the unit would not start.
for secret in mqtt-password mqtt-client.key; do
    if [ ! -e "$ETC/$secret" ]; then
        install -m 0600 -o root -g root /dev/null "$ETC/$secret"
    fi
done
install -d -m 0755 "$UNIT_DIR"
# The unit runs as SERVICE_USER (check-config below checks what that user can read).
sed -e "s/^User=edge-gateway\$/User=$SERVICE_USER/" -e "s/^Group=edge-gateway\$/Group=$SERVICE_USER/" \
    systemd/edge-gateway.service > "$UNIT_DIR/edge-gateway.service.tmp"
chmod 0644 "$UNIT_DIR/edge-gateway.service.tmp"
mv -f "$UNIT_DIR/edge-gateway.service.tmp" "$UNIT_DIR/edge-gateway.service"
if [ -d /run/systemd/system ] && [ "$UNIT_DIR" = /etc/systemd/system ]; then
    systemctl daemon-reload
fi
# From this shell a credential is read at its LoadCredential= source (as root), and every other
# file the daemon opens is checked against the unit's User= (a file it cannot read: exit 2).
EDGE_GATEWAY_UNIT_DIRS="$UNIT_DIR" "$BIN_DIR/edge-gateway" check-config --config "$ETC/gateway.toml" || \
    echo "the config needs attention before the service can start (see the errors above)" >&2
