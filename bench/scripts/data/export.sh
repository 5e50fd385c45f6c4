# usage: export.sh LABEL  (server running per lib.sh; measures one system export)
. $(dirname "$0")/lib.sh
run_export() {
  local before=$(hwm)
  local rss0=$(rss)
  local t0=$(date +%s.%N)
  local loc=$(curl -s -D - -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Prefer: respond-async' "${BASE}fhir/R4/\$export?_type=Patient,Observation" | grep -i content-location | awk '{print $2}' | tr -d '\r')
  local maxrss=0
  while true; do
    code=$(curl -s -o /tmp/databench/manifest.json -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$loc")
    r=$(rss); [ $r -gt $maxrss ] && maxrss=$r
    [ "$code" = 200 ] && break
    sleep 0.2
  done
  local t1=$(date +%s.%N)
  local count=$(python3 -c 'import json;m=json.load(open("/tmp/databench/manifest.json"));print(sum(o["count"] for o in m["output"]))')
  echo "export of $count resources: $(echo "$t1 - $t0" | bc) s, $(echo "$count / ($t1 - $t0)" | bc) resources/s; VmRSS before $rss0 kB, max sampled $maxrss kB; VmHWM before $before kB, after $(hwm) kB"
  # download the files, streamed
  t0=$(date +%s.%N)
  for url in $(python3 -c 'import json;m=json.load(open("/tmp/databench/manifest.json"));print(" ".join(o["url"] for o in m["output"]))'); do
    curl -s -o /tmp/databench/dl.ndjson -H "Authorization: Bearer $TOKEN" "$url"
    wc -l < /tmp/databench/dl.ndjson
  done
  t1=$(date +%s.%N)
  echo "download: $(echo "$t1 - $t0" | bc) s; VmHWM $(hwm) kB"
}
