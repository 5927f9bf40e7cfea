#!/bin/sh
# Creates the key material the compose deployment mounts, without ever overwriting what exists:
#   <dir>/secrets/token_private_key.pem   Ed25519 key the orchestrator signs join tokens with (PKCS#8 PEM)
#   <dir>/secrets/token_public_key.pem    its public half, for signaling and media nodes
#   <dir>/secrets/grafana_admin_password  Grafana's admin password
#   <dir>/.env                            CLASSMESH_DB_PASSWORD for postgres and the orchestrator
# <dir> defaults to the directory of this script (deploy/). Needs openssl.
#
# Compose bind-mounts secret files with their host permissions and the containers run as other users
# (classmesh uid 10001, grafana uid 472), so the files are world-readable and the secrets/ directory is
# private to you (0700): nobody else on the host can reach the files through it.
set -eu

dir=${1:-$(dirname "$0")}
secrets="$dir/secrets"

umask 077
mkdir -p "$secrets"
chmod 0700 "$secrets"

if [ ! -f "$secrets/token_private_key.pem" ]; then
    openssl genpkey -algorithm ed25519 -out "$secrets/token_private_key.pem"
    echo "created $secrets/token_private_key.pem"
fi
openssl pkey -in "$secrets/token_private_key.pem" -pubout -out "$secrets/token_public_key.pem"

if [ ! -f "$secrets/grafana_admin_password" ]; then
    openssl rand -hex 16 > "$secrets/grafana_admin_password"
    echo "created $secrets/grafana_admin_password"
fi

if [ ! -f "$dir/.env" ]; then
    printf 'CLASSMESH_DB_PASSWORD=%s\n' "$(openssl rand -hex 24)" > "$dir/.env"
    echo "created $dir/.env"
fi

chmod 0644 "$secrets/token_private_key.pem" "$secrets/token_public_key.pem" "$secrets/grafana_admin_password"
