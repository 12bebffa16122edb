#!/usr/bin/env bash
# Kinesis and DynamoDB emulators for the Kinesis tests: kinesis-local 0.6.2 (a mock of the
# Kinesis API) and dynalite 4.0.0 (DynamoDB on in-memory LevelDB), both from npm, loopback only.
# See ../shared/test-services.md for what they were checked to do.
#
#   scripts/kinesis-services.sh start   install if needed, start both on free ports, print
#                                       AUDITNORM_TEST_KINESIS=http://127.0.0.1:P1
#                                       AUDITNORM_TEST_DYNAMODB=http://127.0.0.1:P2
#   scripts/kinesis-services.sh stop    stop the processes this script started (TERM, then KILL)
#   scripts/kinesis-services.sh status  print the two lines if both are running
#
# Use (two steps, so that a failed start fails the caller under `set -e`; `eval "$(...)"`
# alone would hide it):
#   env_lines=$(scripts/kinesis-services.sh start); eval "$env_lines"
#   export AUDITNORM_TEST_KINESIS AUDITNORM_TEST_DYNAMODB
# The endpoints are also written to $DIR/kinesis.endpoint and $DIR/dynamodb.endpoint; logs are
# $DIR/kinesis.log and $DIR/dynamodb.log. DIR is ${AUDITNORM_KINESIS_DIR:-target/kinesis-services}.
# Everything but the two output lines goes to stderr.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=lib/services.sh
. scripts/lib/services.sh
DIR=${AUDITNORM_KINESIS_DIR:-$PWD/target/kinesis-services}
KINESIS_PKG=kinesis-local@0.6.2
DYNALITE_PKG=dynalite@4.0.0
KINESIS_MAIN="$DIR/node_modules/kinesis-local/main.js"
KINESIS_CERT="$DIR/node_modules/kinesis-local/server.json"
DYNALITE_MAIN="$DIR/node_modules/dynalite/cli.js"

# name -> files
pidfile() { echo "$DIR/$1.pid"; }
endpointfile() { echo "$DIR/$1.endpoint"; }
logfile() { echo "$DIR/$1.log"; }

running_pid() { pid_running "$(pidfile "$1")"; }

need_node() {
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && [ "${CI:-}" = true ]; then
    echo "node/npm missing: installing nodejs and npm (apt-get, CI)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && return 0
  fi
  echo "error: node and npm are needed for kinesis-local and dynalite; install them" \
    "(Debian: apt-get install -y nodejs npm)" >&2
  exit 1
}

install() {
  if [ -f "$KINESIS_MAIN" ] && [ -f "$KINESIS_CERT" ] && [ -f "$DYNALITE_MAIN" ]; then
    return 0
  fi
  mkdir -p "$DIR"
  echo "installing $KINESIS_PKG and $DYNALITE_PKG into $DIR (node $(node --version))" >&2
  # npm prints its progress and warnings on stdout too: keep stdout for the two result lines.
  npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error \
    "$KINESIS_PKG" "$DYNALITE_PKG" >&2
  for f in "$KINESIS_MAIN" "$KINESIS_CERT" "$DYNALITE_MAIN"; do
    [ -f "$f" ] || { echo "error: $f missing after npm install" >&2; exit 1; }
  done
}

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

port_open() {
  node -e 'const c=require("net").connect({host:"127.0.0.1",port:+process.argv[1]});c.setTimeout(200);c.on("connect",()=>process.exit(0));c.on("error",()=>process.exit(1));c.on("timeout",()=>process.exit(1))' "$1"
}

# A free port that is not in the arguments (two free_port calls may return the same number).
fresh_port() {
  local p taken
  while :; do
    p=$(free_port)
    taken=0
    for t in "$@"; do [ "$p" = "$t" ] && taken=1; done
    if [ $taken = 0 ] && ! port_open "$p"; then
      echo "$p"
      return 0
    fi
  done
}

# wait_ready NAME PID PORT: until PORT answers while PID lives (20 s).
wait_ready() {
  local name=$1 pid=$2 port=$3 i
  for i in $(seq 1 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: $name exited at start; its log ($(logfile "$name")):" >&2
      tail -n 20 "$(logfile "$name")" >&2
      return 1
    fi
    if port_open "$port"; then
      return 0
    fi
    sleep 0.1
  done
  echo "error: $name did not open port $port within 20 s; its log:" >&2
  tail -n 20 "$(logfile "$name")" >&2
  return 1
}

print_endpoints() {
  echo "AUDITNORM_TEST_KINESIS=$(cat "$(endpointfile kinesis)")"
  echo "AUDITNORM_TEST_DYNAMODB=$(cat "$(endpointfile dynamodb)")"
}

start() {
  if running_pid kinesis >/dev/null && running_pid dynamodb >/dev/null \
    && [ -f "$(endpointfile kinesis)" ] && [ -f "$(endpointfile dynamodb)" ]; then
    print_endpoints
    return 0
  fi
  # Half running (one crashed): start both afresh.
  stop
  need_node
  install
  mkdir -p "$DIR"
  local kport ktls dport kpid dpid
  kport=$(fresh_port)
  ktls=$(fresh_port "$kport")
  dport=$(fresh_port "$kport" "$ktls")

  # setsid: the services outlive this script and are stopped by PID only. Resharding and
  # stream creation take no time (tests wait for ACTIVE anyway); each can be overridden.
  # kinesis-local counts shards of every stream against one account limit (50 by default):
  # the test suite creates many streams, so the limit is raised.
  KINESIS_MOCK_PLAIN_PORT=$kport \
    KINESIS_MOCK_TLS_PORT=$ktls \
    KINESIS_MOCK_CERT_PATH=$KINESIS_CERT \
    CREATE_STREAM_DURATION=${CREATE_STREAM_DURATION:-0ms} \
    DELETE_STREAM_DURATION=${DELETE_STREAM_DURATION:-0ms} \
    REGISTER_STREAM_CONSUMER_DURATION=${REGISTER_STREAM_CONSUMER_DURATION:-0ms} \
    DEREGISTER_STREAM_CONSUMER_DURATION=${DEREGISTER_STREAM_CONSUMER_DURATION:-0ms} \
    SPLIT_SHARD_DURATION=${SPLIT_SHARD_DURATION:-0ms} \
    MERGE_SHARDS_DURATION=${MERGE_SHARDS_DURATION:-0ms} \
    UPDATE_SHARD_COUNT_DURATION=${UPDATE_SHARD_COUNT_DURATION:-0ms} \
    SHOULD_PERSIST_DATA=false \
    SHARD_LIMIT=${SHARD_LIMIT:-100000} \
    ON_DEMAND_STREAM_COUNT_LIMIT=${ON_DEMAND_STREAM_COUNT_LIMIT:-1000} \
    LOG_LEVEL=${KINESIS_MOCK_LOG_LEVEL:-WARN} \
    setsid node "$KINESIS_MAIN" >"$(logfile kinesis)" 2>&1 </dev/null &
  kpid=$!
  echo "$kpid" >"$(pidfile kinesis)"

  setsid node "$DYNALITE_MAIN" --port "$dport" --host 127.0.0.1 \
    >"$(logfile dynamodb)" 2>&1 </dev/null &
  dpid=$!
  echo "$dpid" >"$(pidfile dynamodb)"

  if ! wait_ready kinesis "$kpid" "$kport" || ! wait_ready dynamodb "$dpid" "$dport"; then
    stop
    exit 1
  fi
  echo "http://127.0.0.1:$kport" >"$(endpointfile kinesis)"
  echo "http://127.0.0.1:$dport" >"$(endpointfile dynamodb)"
  print_endpoints
}

# Both get SIGTERM at once, then each is waited for: up to 5 s, then SIGKILL.
stop() {
  local name pid pids=()
  for name in kinesis dynamodb; do
    if pid=$(running_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$name:$pid")
    fi
  done
  for np in "${pids[@]}"; do
    await_exit "${np%%:*}" "${np#*:}"
  done
  for name in kinesis dynamodb; do
    rm -f "$(pidfile "$name")" "$(endpointfile "$name")"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running_pid kinesis >/dev/null && running_pid dynamodb >/dev/null; then
      print_endpoints
    else
      echo "not running" >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
