set -e
. $(dirname "$0")/lib.sh
. $(dirname "$0")/export.sh
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
rm -f /tmp/databench/j1 /tmp/databench/j2
start_server
echo "== fhirgate-bench transaction scenario on the same server"
$BIN/fhirgate-bench --base-url $BASE --client-id $ID --client-secret $SECRET --scenario transaction --duration 15 --patients 100 2>&1 | tail -15
echo "== import part 1 (200,000 resources), concurrency 32, batch 100"
$BIN/fhirgate import /tmp/databench/part1 --base-url $BASE --client-id $ID --client-secret $SECRET --concurrency 32 --batch-size 100 --journal /tmp/databench/j1 2>&1 | tail -2
stop_server
start_server
echo "== export at 200,000"
run_export
echo "== import part 2 (800,000 more)"
$BIN/fhirgate import /tmp/databench/part2 --base-url $BASE --client-id $ID --client-secret $SECRET --concurrency 32 --batch-size 100 --journal /tmp/databench/j2 2>&1 | tail -2
stop_server
start_server
echo "== export at 1,000,000"
run_export
stop_server
