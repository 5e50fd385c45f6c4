BIN=${BIN:-target/release}
DB=fhirgate_data_bench
PORT=18203
BASE=http://127.0.0.1:$PORT/
ID=6d0f1c2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f
SECRET=0123456789abcdef0123456789abcdef0123456789abcdef
start_server() {
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB FHIRGATE_BIND=127.0.0.1:$PORT \
  FHIRGATE_ADMIN_CLIENT_ID=$ID FHIRGATE_ADMIN_CLIENT_SECRET=$SECRET FHIRGATE_ADMIN_PASSWORD=bench-password-1234 \
  FHIRGATE_LOG_LEVEL=warn FHIRGATE_STATEMENT_TIMEOUT=300 $BIN/fhirgate > /tmp/databench/server.log 2>&1 &
  PID=$!
  for i in $(seq 1 100); do curl -sf ${BASE}healthcheck >/dev/null && break; sleep 0.3; done
  TOKEN=$(curl -s -d grant_type=client_credentials -d client_id=$ID -d client_secret=$SECRET ${BASE}oauth2/token | python3 -c 'import sys,json;print(json.load(sys.stdin)["access_token"])')
}
hwm() { grep VmHWM /proc/$PID/status | awk '{print $2}'; }
rss() { grep VmRSS /proc/$PID/status | awk '{print $2}'; }
stop_server() { kill $PID; wait $PID 2>/dev/null || true; }
