"""Produces Debezium change events as Avro, the way a Kafka Connect pipeline would: the
envelope schema registered in the schema registry, each event written by fastavro in the
Confluent wire format and sent with confluent-kafka. Tombstones are messages without a value.

usage: debezium_producer.py BROKERS REGISTRY_URL TOPIC CHANGES_JSON
CHANGES_JSON: [{"key": "1", "op": "c"|"u"|"d"|"r"|"tombstone", "before": {...}|null,
                "after": {...}|null, "ts_ms": 1700000000000}, ...]
"""
import io
import json
import struct
import sys
import urllib.request

import fastavro
from confluent_kafka import Producer

ROW = {
    "type": "record",
    "name": "Value",
    "fields": [
        {"name": "id", "type": "int"},
        {"name": "city", "type": "string"},
        {"name": "amount", "type": ["null", "double"], "default": None},
        {"name": "qty", "type": ["null", "long"], "default": None},
    ],
}

# The envelope Debezium's Avro converter writes (fields as documented for the PostgreSQL
# connector; `source` trimmed to the fields every connector has).
ENVELOPE = {
    "type": "record",
    "name": "Envelope",
    "namespace": "shop.public.orders",
    "fields": [
        {"name": "before", "type": ["null", ROW], "default": None},
        {"name": "after", "type": ["null", "Value"], "default": None},
        {
            "name": "source",
            "type": {
                "type": "record",
                "name": "Source",
                "namespace": "io.debezium.connector.postgresql",
                "fields": [
                    {"name": "version", "type": "string"},
                    {"name": "connector", "type": "string"},
                    {"name": "name", "type": "string"},
                    {"name": "ts_ms", "type": "long"},
                    {"name": "snapshot", "type": ["null", "string"], "default": "false"},
                    {"name": "db", "type": "string"},
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                ],
            },
        },
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
    ],
}


def register(registry, subject):
    request = urllib.request.Request(
        f"{registry}/subjects/{subject}/versions",
        data=json.dumps({"schema": json.dumps(ENVELOPE)}).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["id"]


def main():
    brokers, registry, topic, changes_path = sys.argv[1:5]
    with open(changes_path) as f:
        changes = json.load(f)
    schema_id = register(registry, f"{topic}-value")
    parsed = fastavro.parse_schema(ENVELOPE)
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    errors = []

    def delivered(err, _msg):
        if err is not None:
            errors.append(err)

    for change in changes:
        if change["op"] == "tombstone":
            producer.produce(topic, key=change["key"], value=None, on_delivery=delivered)
            continue
        event = {
            "before": change["before"],
            "after": change["after"],
            "source": {
                "version": "2.7.0.Final",
                "connector": "postgresql",
                "name": "shop",
                "ts_ms": change["ts_ms"],
                "snapshot": "true" if change["op"] == "r" else "false",
                "db": "shop",
                "schema": "public",
                "table": "orders",
            },
            "op": change["op"],
            "ts_ms": change["ts_ms"] + 40,
        }
        out = io.BytesIO()
        out.write(b"\x00" + struct.pack(">I", schema_id))
        fastavro.schemaless_writer(out, parsed, event)
        producer.produce(topic, key=change["key"], value=out.getvalue(), on_delivery=delivered)
    remaining = producer.flush(30)
    if remaining or errors:
        sys.exit(f"{remaining} undelivered, errors: {errors}")
    print(f"produced {len(changes)} changes with schema id {schema_id}")


if __name__ == "__main__":
    main()
