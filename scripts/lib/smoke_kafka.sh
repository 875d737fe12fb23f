#!/usr/bin/env bash
# Smoke check of the local Kafka broker and schema registry (scripts/lib/kafka.sh, registry.sh):
# fetch (cached), start both in a temp dir, register an Avro schema through the Confluent API,
# produce and consume one message with the Java console tools from the Kafka jars, tear down.
# If a Python with confluent-kafka[avro,schemaregistry] is at hand (SMOKE_PYTHON, default the repo's
# .venv/bin/python), it also does a Confluent-framed Avro round trip through the registry.
#   bash scripts/lib/smoke_kafka.sh          exit 0 = pass
# Uses curl when present, python3 otherwise. Prints timings and RSS of both JVMs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=kafka.sh
source "$here/kafka.sh"
# shellcheck source=registry.sh
source "$here/registry.sh"

smoke_dir="$(mktemp -d "${TMPDIR:-/tmp}/campaign-smoke-kafka.XXXXXX")"
cleanup() {
  local rc=$?
  registry_down "$smoke_dir/registry" || true
  kafka_down "$smoke_dir/kafka" || true
  if (( rc == 0 )) && [[ -z "${SMOKE_KEEP:-}" ]]; then rm -rf "$smoke_dir"
  else echo "smoke: state kept in $smoke_dir" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ms() { date +%s%3N; }
fail() { echo "SMOKE FAIL: $*" >&2; exit 1; }
http() {  # METHOD URL [json-body] -> body on stdout, fails on non-2xx
  local method="$1" url="$2" body="${3:-}"
  if command -v curl >/dev/null 2>&1; then
    curl -sS -f --max-time 10 -X "$method" -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
      ${body:+--data "$body"} "$url"
  else
    python3 - "$method" "$url" "$body" <<'PY'
import sys, urllib.request
m, u, b = sys.argv[1:4]
req = urllib.request.Request(u, data=b.encode() if b else None, method=m,
                             headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
sys.stdout.write(urllib.request.urlopen(req, timeout=10).read().decode())
PY
  fi
}
json_get() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
rss_mb() { ps -o rss= -p "$1" 2>/dev/null | awk '{printf "%d", $1/1024}'; }

t=$(ms); kafka_fetch; t_kfetch=$(( $(ms) - t ))
t=$(ms); registry_fetch; t_rfetch=$(( $(ms) - t ))

t=$(ms); kafka_up "$smoke_dir/kafka"; t_kup=$(( $(ms) - t ))
t=$(ms); registry_up "$smoke_dir/registry"; t_rup=$(( $(ms) - t ))
# shellcheck disable=SC1091
source "$smoke_dir/kafka/env"
# shellcheck disable=SC1091
source "$smoke_dir/registry/env"
[[ "$KAFKA_BROKER" == 127.0.0.1:* ]] || fail "KAFKA_BROKER=$KAFKA_BROKER"
[[ "$CAMPAIGN_SCHEMA_REGISTRY_URL" == http://127.0.0.1:*/apis/ccompat/v7 ]] || fail "registry url $CAMPAIGN_SCHEMA_REGISTRY_URL"

# --- registry: register an Avro schema, read it back by id -------------------------------
schema='{"type":"record","name":"CustomerCreated","namespace":"campaign.smoke","fields":[{"name":"customer_id","type":"string"},{"name":"tier","type":["null","string"],"default":null}]}'
body="$(python3 -c 'import json,sys; print(json.dumps({"schema": sys.argv[1], "schemaType": "AVRO"}))' "$schema")"
resp="$(http POST "$CAMPAIGN_SCHEMA_REGISTRY_URL/subjects/customer.created-value/versions" "$body")" || fail "register schema"
schema_id="$(json_get id <<<"$resp")" || fail "no id in $resp"
again="$(http POST "$CAMPAIGN_SCHEMA_REGISTRY_URL/subjects/customer.created-value/versions" "$body")"
[[ "$(json_get id <<<"$again")" == "$schema_id" ]] || fail "re-registering gave another id: $again"
got="$(http GET "$CAMPAIGN_SCHEMA_REGISTRY_URL/schemas/ids/$schema_id")" || fail "GET /schemas/ids/$schema_id"
python3 - "$schema" "$got" <<'PY' || fail "schema read back differs: $got"
import json, sys
assert json.loads(json.loads(sys.argv[2])["schema"]) == json.loads(sys.argv[1])
PY
echo "smoke: registered Avro schema id $schema_id and read it back" >&2

# --- kafka: produce and consume one message ------------------------------------------------
nonce="smoke-$$-$RANDOM"
printf '{"schema_id":%s,"nonce":"%s"}\n' "$schema_id" "$nonce" |
  kafka_java "$smoke_dir/kafka" org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "$KAFKA_BROKER" --topic customer.created \
    --command-property acks=all >/dev/null || fail "produce"
consumed="$(kafka_java "$smoke_dir/kafka" org.apache.kafka.tools.consumer.ConsoleConsumer \
    --bootstrap-server "$KAFKA_BROKER" --topic customer.created --from-beginning \
    --max-messages 1 --timeout-ms 30000 --group "smoke-$$" 2>/dev/null)" || fail "consume"
[[ "$consumed" == *"$nonce"* ]] || fail "consumed '$consumed', wanted nonce $nonce"
echo "smoke: produced and consumed one message on customer.created" >&2

# --- optional (SMOKE_CHAOS=1): SIGKILL the broker, restart it on the same data, read again -----
if [[ -n "${SMOKE_CHAOS:-}" ]]; then
  t=$(ms); kafka_kill "$smoke_dir/kafka"; t_kill=$(( $(ms) - t ))
  kafka_is_running "$smoke_dir/kafka" && fail "kafka still running after kafka_kill"
  t=$(ms); kafka_start_again "$smoke_dir/kafka"; t_again=$(( $(ms) - t ))
  [[ "$(cat "$smoke_dir/kafka/env")" == "export KAFKA_BROKER=$KAFKA_BROKER" ]] || fail "broker address changed on restart"
  consumed="$(kafka_java "$smoke_dir/kafka" org.apache.kafka.tools.consumer.ConsoleConsumer \
      --bootstrap-server "$KAFKA_BROKER" --topic customer.created --from-beginning \
      --max-messages 1 --timeout-ms 30000 --group "smoke-again-$$" 2>/dev/null)" || fail "consume after restart"
  [[ "$consumed" == *"$nonce"* ]] || fail "after restart consumed '$consumed', wanted nonce $nonce"
  echo "smoke: kafka_kill ${t_kill}ms, kafka_start_again ${t_again}ms, message still there" >&2
fi

# --- optional: Confluent-framed Avro through confluent-kafka + the registry --------------------
py="${SMOKE_PYTHON:-}"
if [[ -z "$py" && -x "$here/../../.venv/bin/python" ]]; then py="$here/../../.venv/bin/python"; fi
if [[ -n "$py" ]] && "$py" -c 'import confluent_kafka.schema_registry.avro, fastavro' 2>/dev/null; then
  timeout 60 "$py" - "$KAFKA_BROKER" "$CAMPAIGN_SCHEMA_REGISTRY_URL" "$schema" "$nonce" <<'PY' || fail "python Avro round trip"
import sys, time
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

broker, url, schema, nonce = sys.argv[1:5]
sr = SchemaRegistryClient({"url": url})
ser = AvroSerializer(sr, schema, conf={"auto.register.schemas": True})
de = AvroDeserializer(sr)
ctx = SerializationContext("vip_tier.assigned", MessageField.VALUE)
value = ser({"customer_id": nonce, "tier": "gold"}, ctx)
assert value[0] == 0, "Confluent magic byte"
p = Producer({"bootstrap.servers": broker, "acks": "all"})
p.produce("vip_tier.assigned", key=nonce.encode(), value=value)
assert p.flush(20) == 0, "produce not delivered"
c = Consumer({"bootstrap.servers": broker, "group.id": "smoke-py-" + nonce,
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe(["vip_tier.assigned"])
deadline = time.time() + 40
try:
    while time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        rec = de(m.value(), ctx)
        assert rec == {"customer_id": nonce, "tier": "gold"}, rec
        print("smoke: confluent-kafka Avro round trip ok (schema id %d)"
              % int.from_bytes(m.value()[1:5], "big"), file=sys.stderr)
        break
    else:
        raise SystemExit("no message consumed")
finally:
    c.close()
PY
else
  echo "smoke: (no Python that imports confluent_kafka.schema_registry.avro: skipped the Avro client round trip)" >&2
fi

k_rss="$(rss_mb "$(cat "$smoke_dir/kafka/kafka.pid")")"
r_rss="$(rss_mb "$(cat "$smoke_dir/registry/registry.pid")")"
t=$(ms); registry_down "$smoke_dir/registry"; t_rdown=$(( $(ms) - t ))
t=$(ms); kafka_down "$smoke_dir/kafka"; t_kdown=$(( $(ms) - t ))
kafka_is_running "$smoke_dir/kafka" && fail "kafka still running after kafka_down"
registry_is_running "$smoke_dir/registry" && fail "registry still running after registry_down"

printf 'smoke timings (ms): kafka_fetch=%s registry_fetch=%s kafka_up=%s registry_up=%s registry_down=%s kafka_down=%s\n' \
  "$t_kfetch" "$t_rfetch" "$t_kup" "$t_rup" "$t_rdown" "$t_kdown"
printf 'smoke RSS (MiB): kafka=%s registry=%s\n' "$k_rss" "$r_rss"
echo "SMOKE OK"
