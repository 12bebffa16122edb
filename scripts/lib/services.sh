# shellcheck shell=bash
# Sourced (not run) by scripts/kafka-broker.sh and scripts/kinesis-services.sh: the PID-file
# check and the stop sequence of a service they started with setsid, in one place.

# pid_running PIDFILE: prints the PID in PIDFILE when that process is alive; fails otherwise.
pid_running() {
  [ -f "$1" ] || return 1
  local pid
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# await_exit NAME PID: once PID has had its SIGTERM, up to 5 s for it to exit, then SIGKILL;
# returns when it is gone. The caller sends the SIGTERM, so that it can stop several at once.
await_exit() {
  local name=$1 pid=$2 i
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name (pid $pid) ignored SIGTERM for 5 s: killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # Reap it when it is our child; otherwise wait until it is gone.
  wait "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
}
