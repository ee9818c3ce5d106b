#!/usr/bin/env bash
# One Apache Kafka 4.1 broker (combined broker + KRaft controller) on loopback, for
# development and the test suite.
#
#   scripts/kafka_server.sh start   fetch the jars with Maven if needed, format, start, print bootstrap
#   scripts/kafka_server.sh url     print the bootstrap address of the running broker
#   scripts/kafka_server.sh sasl    print the SASL/SCRAM address, then a line per user:
#                                   NAME PASSWORD (admin, service, ingest, outsider)
#   scripts/kafka_server.sh stop    stop it (cleanly: SIGTERM, then wait)
#   scripts/kafka_server.sh restart stop and start again on the same ports and data
#   scripts/kafka_server.sh resume  start again on the same ports and data after a stop
#
# Jars live in .cache/kafka/libs (from scripts/kafka/pom.xml); data, config and log in
# .cache/kafka/run, made afresh at every start. Needs Java 17+ and Maven.
#
# Two client listeners: SASL_PLAINTEXT with SCRAM-SHA-512 users made by the storage tool (as
# KRaft requires) under the standard authorizer with allow.everyone.if.no.acl.found=false, so
# a user may do only what an ACL grants (`crm-ledger kafka acls`); and PLAINTEXT, whose
# ANONYMOUS principal is a super user, for the tests that are not about principals (and the
# broker's own controller and inter-broker traffic). A production cluster has no such door.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache/kafka"
libs="$cache/libs"
run="$cache/run"

die() { echo "kafka_server: $*" >&2; exit 1; }

fetch() {
  [ -f "$libs/.complete" ] && return
  command -v java >/dev/null || die "java not found; install a JDK 17 (Debian: openjdk-17-jre-headless)"
  command -v mvn >/dev/null || die "mvn not found; install Maven (Debian: maven)"
  echo "kafka_server: fetching Kafka jars from Maven Central into $libs" >&2
  rm -rf "$libs"
  mvn -q -f "$root/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" >&2 || die "mvn could not fetch the Kafka jars"
  touch "$libs/.complete"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

running() { [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; }

start() {
  if running; then cat "$run/bootstrap"; return; fi
  fetch
  rm -rf "$run" && mkdir -p "$run/data"
  local port cport sport cluster
  port=$(free_port); cport=$(free_port); sport=$(free_port)
  while [ "$cport" = "$port" ]; do cport=$(free_port); done
  while [ "$sport" = "$port" ] || [ "$sport" = "$cport" ]; do sport=$(free_port); done
  cluster=$(python3 "$root/scripts/kafka/cluster_id.py")
  cat >"$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SASL_PLAINTEXT://127.0.0.1:$sport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SASL_PLAINTEXT://127.0.0.1:$sport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS;User:admin
log.dirs=$run/data
num.partitions=6
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  echo "127.0.0.1:$port" >"$run/address"
  local scram=() name password
  (umask 077; echo "127.0.0.1:$sport" >"$run/sasl")
  for name in admin service ingest outsider; do
    password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
    echo "$name $password" >>"$run/sasl"
    scram+=(--add-scram "SCRAM-SHA-512=[name=$name,password=$password]")
  done
  java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format --standalone \
    --cluster-id "$cluster" --config "$run/server.properties" "${scram[@]}" \
    >"$run/format.log" 2>&1 || die "formatting KRaft storage failed; see $run/format.log"
  launch
}

java_opts=(-Xms256m -Xmx1g "-Dlog4j2.configurationFile=$root/scripts/kafka/log4j2.yaml")

# Start the broker on the formatted storage in $run and wait until it serves.
launch() {
  : >"$run/server.log"
  nohup java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$run/server.properties" \
    >>"$run/server.log" 2>&1 &
  echo $! >"$run/pid"
  for _ in $(seq 1 120); do
    if grep -q "Kafka Server started" "$run/server.log"; then
      cp "$run/address" "$run/bootstrap"
      cat "$run/bootstrap"
      return
    fi
    running || die "the broker exited; see $run/server.log"
    sleep 0.5
  done
  stop
  die "no 'Kafka Server started' within 60 s; see $run/server.log"
}

# Stop and start again on the same ports and data (for outage tests).
restart() {
  [ -f "$run/server.properties" ] || die "no broker to restart; run $0 start"
  stop
  launch
}

stop() {
  running || { rm -f "$run/bootstrap"; return 0; }
  local pid; pid=$(cat "$run/pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$run/pid" "$run/bootstrap"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  resume) running && cat "$run/bootstrap" || { [ -f "$run/server.properties" ] || die "nothing to resume"; launch; } ;;
  url) running || die "not running; run scripts/kafka_server.sh start"; cat "$run/bootstrap" ;;
  sasl) running || die "not running; run scripts/kafka_server.sh start"; cat "$run/sasl" ;;
  fetch) fetch ;;
  *) die "usage: $0 start|url|sasl|stop|restart|resume|fetch" ;;
esac
