#!/usr/bin/env bash
# Runs every warren test, the RabbitMQ ones included: makes sure a RabbitMQ broker with its
# management API answers (starting, or installing and starting, a local one when needed), then
# runs `cargo test --workspace` with WARREN_REQUIRE_RABBITMQ=1, so a test that cannot reach the
# broker fails instead of skipping. Extra arguments go to `cargo test`.
#
# Environment:
#   AMQP_URL                  broker URL (default amqp://guest:guest@127.0.0.1:5672/%2f); its host
#                             and port are the ones waited for
#   RABBITMQ_MANAGEMENT_URL   management API (default http://<AMQP host>:15672)
#   RABBITMQ_WAIT_SECONDS     how long to wait for the broker to answer (default 90)
#   WARREN_TEST_MINUTES_MAX   how long `cargo test` (build included) may run before it is stopped
#                             and the run fails (default 60; a clean run takes about 20)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

AMQP_URL_DEFAULT='amqp://guest:guest@127.0.0.1:5672/%2f'
WAIT_SECONDS="${RABBITMQ_WAIT_SECONDS:-90}"
# One TCP probe may take this long (a firewalled host never answers).
PROBE_SECONDS=2

log() { printf '==> %s\n' "$*"; }
fail() {
    printf 'ci/test.sh: %s\n' "$*" >&2
    exit 1
}

# host and port of an URL: scheme://[user[:password]@]host[:port][/...]
url_host() {
    local rest="${1#*://}"
    rest="${rest%%/*}"
    rest="${rest##*@}"
    if [[ "$rest" == \[* ]]; then
        printf '%s\n' "${rest%%]*}]"
    else
        printf '%s\n' "${rest%%:*}"
    fi
}
url_port() {
    local rest="${1#*://}" default="$2"
    rest="${rest%%/*}"
    rest="${rest##*@}"
    rest="${rest##*]}"
    if [[ "$rest" == *:* ]]; then printf '%s\n' "${rest##*:}"; else printf '%s\n' "$default"; fi
}

AMQP_HOST="$(url_host "${AMQP_URL:-$AMQP_URL_DEFAULT}")"
AMQP_PORT="$(url_port "${AMQP_URL:-$AMQP_URL_DEFAULT}" 5672)"
MANAGEMENT_URL="${RABBITMQ_MANAGEMENT_URL:-http://$AMQP_HOST:15672}"
MANAGEMENT_HOST="$(url_host "$MANAGEMENT_URL")"
MANAGEMENT_PORT="$(url_port "$MANAGEMENT_URL" 80)"

# Whether something accepts TCP connections on host $1, port $2 (bash's /dev/tcp, no tools needed).
answers() {
    local host="${1#[}"
    host="${host%]}"
    timeout "$PROBE_SECONDS" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$2" 2>/dev/null
}

is_local() {
    case "$1" in
        127.* | localhost | '[::1]') return 0 ;;
        *) return 1 ;;
    esac
}

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        fail "need root (or sudo) to run: $*"
    fi
}

install_rabbitmq() {
    command -v apt-get >/dev/null || fail "rabbitmq-server is not installed and apt-get is not available; install RabbitMQ or set AMQP_URL"
    log "installing rabbitmq-server with apt-get"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
}

start_rabbitmq() {
    command -v rabbitmq-server >/dev/null || install_rabbitmq
    # The Debian package may have started a node already (systemd); give it a moment.
    if answers "$AMQP_HOST" "$AMQP_PORT"; then
        return
    fi
    log "enabling the management plugin (offline, before start)"
    as_root rabbitmq-plugins enable --offline rabbitmq_management >/dev/null
    log "starting rabbitmq-server -detached"
    # Fails when a node is already booting (e.g. started by the package's service); the wait
    # below is what decides.
    as_root rabbitmq-server -detached || log "rabbitmq-server -detached failed; waiting for a node anyway"
}

# Waits until host $1 port $2 answers, or the shared deadline passes. $3 names the service.
wait_for() {
    log "waiting for $3 at $1:$2"
    until answers "$1" "$2"; do
        if ((SECONDS >= deadline)); then
            fail "$3 at $1:$2 did not answer within ${WAIT_SECONDS}s (a local node logs to /var/log/rabbitmq/; set RABBITMQ_WAIT_SECONDS to wait longer)"
        fi
        sleep 1
    done
    log "$3 answers at $1:$2 (after ${SECONDS}s)"
}

if answers "$AMQP_HOST" "$AMQP_PORT"; then
    log "RabbitMQ already answers at $AMQP_HOST:$AMQP_PORT"
elif is_local "$AMQP_HOST"; then
    log "nothing answers at $AMQP_HOST:$AMQP_PORT; starting a local RabbitMQ"
    start_rabbitmq
else
    log "RabbitMQ at $AMQP_HOST:$AMQP_PORT is remote; waiting for it, not starting one"
fi
# The deadline covers both waits, not an installation before them.
SECONDS=0
deadline="$WAIT_SECONDS"
wait_for "$AMQP_HOST" "$AMQP_PORT" "RabbitMQ (AMQP)"

if ! answers "$MANAGEMENT_HOST" "$MANAGEMENT_PORT"; then
    if command -v rabbitmq-plugins >/dev/null && is_local "$AMQP_HOST"; then
        # Idempotent, and works on a running node.
        log "enabling the management plugin"
        as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
    fi
fi
wait_for "$MANAGEMENT_HOST" "$MANAGEMENT_PORT" "RabbitMQ management API"

# Clients in other languages for the wire server's cross-language tests
# (broker-mem/tests/wire_clients.rs): Python's pika, kombu (over py-amqp) and aio-pika (over
# aiormq) and Node.js's amqplib, at the versions pinned in broker-mem/tests/clients/ (their
# transcripts depend on how each decodes what it receives).
CLIENTS_DIR=broker-mem/tests/clients
required_clients=()
# Whether every package pinned in requirements.txt is installed at its pinned version.
python_clients_pinned() {
    python3 - "$CLIENTS_DIR/requirements.txt" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    name, _, pinned = line.split("#")[0].strip().partition("==")
    if name and version(name) != pinned:
        sys.exit(1)
PY
}
if ! python_clients_pinned; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        command -v apt-get >/dev/null || fail "python3 with pip is needed for the Python client tests"
        log "installing python3 and pip with apt-get"
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3 python3-pip
    fi
    log "installing pika, kombu and aio-pika from PyPI ($CLIENTS_DIR/requirements.txt)"
    python3 -m pip install --quiet -r "$CLIENTS_DIR/requirements.txt" \
        || python3 -m pip install --quiet --break-system-packages -r "$CLIENTS_DIR/requirements.txt" \
        || fail "cannot install the Python clients (python3 -m pip install -r $CLIENTS_DIR/requirements.txt)"
fi
required_clients+=(pika kombu aio-pika)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    command -v apt-get >/dev/null || fail "node and npm are needed for the amqplib tests; install Node.js 18 or later"
    log "installing nodejs and npm with apt-get"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
fi
node_major="$(node -e 'console.log(process.versions.node.split(".")[0])' 2>/dev/null || echo 0)"
if ((node_major >= 18)); then
    log "installing amqplib (npm ci in $CLIENTS_DIR)"
    npm ci --prefix "$CLIENTS_DIR" --no-audit --no-fund --loglevel=error \
        || fail "cannot install amqplib (npm ci --prefix $CLIENTS_DIR)"
    required_clients+=(amqplib)
else
    # Only the package registries are reachable, and this distribution's Node.js is too old
    # for amqplib: its tests skip, visibly, rather than fail the whole run.
    log "WARNING: Node.js $(node --version 2>/dev/null) is older than amqplib needs (18): the amqplib tests will skip"
fi
WARREN_REQUIRE_CLIENTS="$(IFS=,; printf '%s' "${required_clients[*]}")"
export WARREN_REQUIRE_CLIENTS

export WARREN_REQUIRE_RABBITMQ=1
log "running cargo test --workspace $* (WARREN_REQUIRE_RABBITMQ=1, WARREN_REQUIRE_CLIENTS=$WARREN_REQUIRE_CLIENTS: these may not skip)"
# A test that hangs fails the run here, with a line that says so, rather than running into CI's
# own limit; cargo's "has been running for over 60 seconds" lines above it name the test.
TEST_MINUTES_MAX="${WARREN_TEST_MINUTES_MAX:-60}"
status=0
timeout --kill-after=30s "${TEST_MINUTES_MAX}m" cargo test --workspace "$@" || status=$?
if [[ "$status" -eq 124 || "$status" -eq 137 ]]; then
    fail "cargo test did not finish within $TEST_MINUTES_MAX minutes (WARREN_TEST_MINUTES_MAX); see the tests reported as running for over 60 seconds above"
elif [[ "$status" -ne 0 ]]; then
    exit "$status"
fi
log "all tests passed"
