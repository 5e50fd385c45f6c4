set -e
. $(dirname "$0")/lib.sh
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
head -c 1048576 /dev/urandom > /tmp/databench/1mb.bin
head -c 52428800 /dev/urandom > /tmp/databench/50mb.bin
start_server
# warm-up
curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/octet-stream' --data-binary @/tmp/databench/1mb.bin ${BASE}fhir/R4/Binary
echo "after start and warm-up: VmRSS $(rss) kB, VmHWM $(hwm) kB"
for size in 1mb 50mb; do
  n=$([ $size = 1mb ] && echo 50 || echo 4)
  ids=()
  t0=$(date +%s.%N)
  for i in $(seq 1 $n); do
    id=$(curl -s -H 'Expect:' -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/octet-stream' --data-binary @/tmp/databench/$size.bin ${BASE}fhir/R4/Binary | grep -o "\"id\":\"[^\"]*\"" | head -1 | cut -d\" -f4)
    ids+=($id)
  done
  t1=$(date +%s.%N)
  mb=$([ $size = 1mb ] && echo 1 || echo 50)
  echo "$size upload: $n files in $(echo "$t1 - $t0" | bc) s: $(echo "scale=1; $n * $mb / ($t1 - $t0)" | bc) MB/s; VmHWM $(hwm) kB"
  t0=$(date +%s.%N)
  for id in "${ids[@]}"; do
    curl -s -o /tmp/databench/out.bin -H "Authorization: Bearer $TOKEN" ${BASE}fhir/R4/Binary/$id
  done
  t1=$(date +%s.%N)
  cmp /tmp/databench/out.bin /tmp/databench/$size.bin && echo "bytes unchanged"
  echo "$size download: $n files in $(echo "$t1 - $t0" | bc) s: $(echo "scale=1; $n * $mb / ($t1 - $t0)" | bc) MB/s; VmHWM $(hwm) kB"
done
stop_server
