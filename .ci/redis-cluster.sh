#!/usr/bin/env bash
# A Redis Cluster of 3 masters and 3 replicas on loopback ports for the redis-cluster tests and
# bench: `.ci/redis-cluster.sh start|stop|status|url`.
#
# Ports MP_REDIS_CLUSTER_PORTS (default 7101-7106, away from the single-node server's 6379);
# nodes live under MP_REDIS_CLUSTER_DIR (default /tmp/mp-redis-cluster), one directory each, no
# persistence. The node timeout is short (1000 ms) so that a replica takes over from a killed
# master within a couple of seconds (the failover test relies on it).
set -euo pipefail

first=${MP_REDIS_CLUSTER_FIRST_PORT:-7101}
ports=$(seq "$first" $((first + 5)))
dir=${MP_REDIS_CLUSTER_DIR:-/tmp/mp-redis-cluster}
timeout_ms=${MP_REDIS_CLUSTER_NODE_TIMEOUT:-1000}

node_up() { redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }
state_ok() { redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; }

start_node() { # port
  local port=$1
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
    --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" \
    --cluster-node-timeout "$timeout_ms" --cluster-replica-validity-factor 0 \
    --save "" --appendonly no \
    --dir "$dir/$port" --logfile "$dir/$port/redis.log" --pidfile "$dir/$port/redis.pid"
}

wait_until() { # what seconds check...
  local what=$1 secs=$2
  shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@"; then return 0; fi
    sleep 0.1
  done
  echo "redis-cluster: $what within ${secs}s failed" >&2
  return 1
}

all_ok() {
  local p
  for p in $ports; do state_ok "$p" || return 1; done
}

# Every node knows all six and three of them are masters with slots.
all_joined() {
  local p
  for p in $ports; do
    [ "$(redis-cli -h 127.0.0.1 -p "$p" cluster nodes 2>/dev/null | grep -vc fail)" -ge 6 ] || return 1
  done
}

start() {
  command -v redis-server >/dev/null || { echo "redis-cluster: redis-server is not installed" >&2; exit 1; }
  if all_ok 2>/dev/null; then echo "redis-cluster: already running on $first-$((first + 5))"; return 0; fi
  stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  local p
  for p in $ports; do start_node "$p"; done
  for p in $ports; do wait_until "node $p answering" 10 node_up "$p"; done
  local addrs=()
  for p in $ports; do addrs+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
    { cat "$dir/create.log" >&2; exit 1; }
  wait_until "cluster_state:ok on every node" 30 all_ok
  wait_until "every node seeing the six" 30 all_joined
  echo "redis-cluster: up on 127.0.0.1:$first-$((first + 5))"
}

stop() {
  local p pid
  for p in $ports; do
    redis-cli -h 127.0.0.1 -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  # A node that did not answer (stopped with SIGSTOP, say): by its pid file.
  for p in $ports; do
    if [ -f "$dir/$p/redis.pid" ]; then
      pid=$(cat "$dir/$p/redis.pid")
      kill -CONT "$pid" 2>/dev/null || true
      kill "$pid" 2>/dev/null || true
    fi
  done
  for p in $ports; do wait_until "node $p stopping" 10 bash -c "! redis-cli -h 127.0.0.1 -p $p ping >/dev/null 2>&1"; done
  rm -rf "$dir"
  echo "redis-cluster: stopped"
}

url() {
  echo "redis-cluster://127.0.0.1:$first,127.0.0.1:$((first + 1)),127.0.0.1:$((first + 2))/"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) all_ok && echo ok ;;
  url) url ;;
  restart-node)
    start_node "${2:?restart-node needs a port}"
    wait_until "node $2 answering" 10 node_up "$2"
    ;;
  *) echo "usage: $0 start|stop|status|url|restart-node PORT" >&2; exit 2 ;;
esac
