#!/usr/bin/env bash
# Install edge-gateway on an edge box (Debian 12, run as root from a checkout of this repo):
#   venv in /opt/edge-gateway/venv (pinned by systemd/constraints.txt), config in
#   /etc/edge-gateway/, buffer in /var/lib/edge-gateway/, a system user, the systemd unit.
# Safe to run again: an existing config and password file are never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/opt/edge-gateway}
ETC=${ETC:-/etc/edge-gateway}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}

if ! id edge-gateway >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/edge-gateway --no-create-home \
        --shell /usr/sbin/nologin --groups dialout,input edge-gateway
fi
python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --upgrade pip
# EXTRAS=hid for USB HID (keyboard-wedge) scanners: evdev compiles against the kernel headers.
"$PREFIX/venv/bin/pip" install -q --constraint systemd/constraints.txt ".${EXTRAS:+[$EXTRAS]}"
install -m 0644 README.md "$PREFIX/README.md"

install -d -m 0750 -o root -g edge-gateway "$ETC"
if [ ! -e "$ETC/gateway.toml" ]; then
    install -m 0640 -o root -g edge-gateway config/gateway.example.toml "$ETC/gateway.toml"
    echo "edit $ETC/gateway.toml, then: systemctl enable --now edge-gateway" >&2
fi
if [ ! -e "$ETC/mqtt-password" ]; then
    install -m 0600 -o root -g root /dev/null "$ETC/mqtt-password"
fi
install -m 0644 systemd/edge-gateway.service "$UNIT_DIR/edge-gateway.service"
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
"$PREFIX/venv/bin/edge-gateway" check-config --config "$ETC/gateway.toml" || \
    echo "the config needs attention before the service can start (see the errors above)" >&2
