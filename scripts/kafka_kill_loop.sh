#!/usr/bin/env bash
# Run the kill-and-restart Kafka test N times in a row (default 10) against one broker and
# print one line per run; exits non-zero if any run failed.
#   scripts/kafka_kill_loop.sh [N]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-10}
bootstrap=$(scripts/kafka_server.sh start) || exit 1
url=$(scripts/pg_test_server.sh start) || exit 1
failed=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  out=$(KAFKA_BOOTSTRAP_SERVERS="$bootstrap" CRM_LEDGER_TEST_DATABASE_URL="$url" \
    .venv/bin/pytest -q -s -p no:cacheprovider tests/integration/test_kafka.py \
    -k killed_mid_batch 2>&1)
  rc=$?
  detail=$(grep -o 'kill test: .*' <<<"$out" | head -n 1)
  echo "run $i: $([ $rc = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s; $detail"
  [ $rc = 0 ] || { failed=$((failed + 1)); tail -n 30 <<<"$out"; }
done
scripts/pg_test_server.sh stop
scripts/kafka_server.sh stop
echo "$((runs - failed)) passed, $failed failed"
[ $failed = 0 ]
