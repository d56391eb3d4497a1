"""pika (Python's most used AMQP 0-9-1 client) against one broker: RabbitMQ or broker-mem's wire
server.

Usage: pika_client.py AMQP_URL. Runs one fixed scenario and prints, as JSON, everything the
client observed; the caller runs it against both brokers and compares (tests/wire_clients.rs).
"""
import datetime
import decimal
import json
import re
import sys

import pika

transcript = []


def note(step, **what):
    transcript.append({"step": step, **what})


def same_vhost(text):
    """A broker names the vhost in its texts; the two runs use different ones."""
    return re.sub(r"in vhost '[^']*'", "in vhost 'V'", str(text))


def plain(value, key=None):
    """A decoded field value as JSON, keeping the Python type pika decoded it to."""
    if key == "time":
        # x-death's time is each broker's clock.
        return type(value).__name__
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": value}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    if isinstance(value, datetime.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, bytes):
        return {"bytes": list(value)}
    if isinstance(value, dict):
        return {k: plain(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return {type(value).__name__: repr(value)}


def seen(method, properties, body):
    """What a delivery, get or return shows a subscriber: the method's fields (minus each
    broker's own consumer tag), the properties set, the body."""
    return {
        "method": type(method).__name__,
        **{name: plain(value) for name, value in sorted(vars(method).items()) if name != "consumer_tag"},
        "body": body.decode("utf-8"),
        "properties": {
            name: plain(value) for name, value in sorted(vars(properties).items()) if value is not None
        },
    }


def closed(error):
    return {"code": error.reply_code, "text": same_vhost(error.reply_text)}


def expect_channel_error(connection, step, act):
    channel = connection.channel()
    try:
        act(channel)
        note(step, closed=None)
    except pika.exceptions.ChannelClosedByBroker as error:
        note(step, closed=closed(error))


def expect_connection_error(params, step, act):
    connection = pika.BlockingConnection(params)
    try:
        act(connection.channel())
        note(step, closed=None)
        connection.close()
    except pika.exceptions.ConnectionClosedByBroker as error:
        note(step, closed=closed(error))


HEADERS = {
    "small": 7,
    "big": 2**40,
    "negative": -5,
    "text": "héllo",
    "yes": True,
    "nothing": None,
    "list": [1, "a", False, [2]],
    "table": {"a": 1, "b": "x"},
    "bytes": b"\x00\xff\n",
    "stamp": datetime.datetime(2023, 11, 14, 22, 13, 20),
    "decimal": decimal.Decimal("3.14"),
}

PROPERTIES = pika.BasicProperties(
    content_type="application/json",
    content_encoding="utf-8",
    headers=HEADERS,
    delivery_mode=2,
    priority=3,
    correlation_id="corr-1",
    reply_to="somewhere",
    expiration="60000",
    message_id="m-1",
    timestamp=1700000001,
    type="job",
    user_id="guest",
    app_id="pika-test",
)


def main(url):
    params = pika.URLParameters(url)
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.exchange_declare("py.x", exchange_type="topic")
    channel.exchange_declare("py.dlx", exchange_type="fanout")
    declared = channel.queue_declare("py.work", arguments={"x-dead-letter-exchange": "py.dlx"})
    note("declare work", message_count=declared.method.message_count, consumer_count=declared.method.consumer_count)
    channel.queue_declare("py.dead")
    channel.queue_bind("py.work", "py.x", "job.*")
    channel.queue_bind("py.dead", "py.dlx")
    channel.confirm_delivery()

    # Publishes with every property and header type, confirmed; one unroutable and mandatory.
    channel.basic_publish("py.x", "job.a", b"one", PROPERTIES)
    channel.basic_publish("py.x", "job.b", b"two", pika.BasicProperties(message_id="m-2"))
    channel.basic_publish("py.x", "job.c", b"three", pika.BasicProperties(message_id="m-3", headers={"n": 3}))
    try:
        channel.basic_publish("py.x", "nobody.home", b"lost", pika.BasicProperties(message_id="m-4"), mandatory=True)
        note("mandatory", returned=None)
    except pika.exceptions.UnroutableError as error:
        returned = error.messages[0]
        note("mandatory", returned=seen(returned.method, returned.properties, returned.body))
    note("check work", message_count=channel.queue_declare("py.work", passive=True).method.message_count)

    # basic.get, nack with requeue: back at its place, redelivered.
    method, properties, body = channel.basic_get("py.work")
    note("get", message=seen(method, properties, body))
    channel.basic_nack(method.delivery_tag, requeue=True)
    method, properties, body = channel.basic_get("py.work")
    note("get again", message=seen(method, properties, body))
    channel.basic_nack(method.delivery_tag, requeue=True)

    # A consumer with a prefetch of 2: acks, rejects one (dead-lettered), acks.
    channel.basic_qos(prefetch_count=2)
    delivered = []

    def on_message(ch, method, properties, body):
        delivered.append(seen(method, properties, body))
        if body == b"two":
            ch.basic_reject(method.delivery_tag, requeue=False)
        else:
            ch.basic_ack(method.delivery_tag)
        if len(delivered) == 3:
            ch.stop_consuming()

    tag = channel.basic_consume("py.work", on_message)
    connection.call_later(10, channel.stop_consuming)
    channel.start_consuming()
    channel.basic_cancel(tag)
    note("consumed", delivered=delivered)

    dead = (None, None, None)
    for _ in range(50):
        dead = channel.basic_get("py.dead", auto_ack=True)
        if dead[0] is not None:
            break
        connection.sleep(0.02)
    note("dead-lettered", message=dead[0] and seen(*dead))

    # Overflow: a queue of one that refuses the rest (a confirm nack).
    channel.queue_declare("py.full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.basic_publish("", "py.full", b"fits")
    try:
        channel.basic_publish("", "py.full", b"overflows")
        note("overflow", nacked=False)
    except pika.exceptions.NackError:
        note("overflow", nacked=True)

    # Headers exchange: a binding's typed arguments against typed headers.
    channel.exchange_declare("py.h", exchange_type="headers")
    channel.queue_declare("py.hq")
    channel.queue_bind("py.hq", "py.h", arguments={"x-match": "any", "n": 1, "kind": "a"})
    for body, headers in [(b"n", {"n": 1}), (b"kind", {"kind": "a"}), (b"neither", {"n": 2}), (b"long", {"n": 2**40})]:
        channel.basic_publish("py.h", "", body, pika.BasicProperties(headers=headers))
    note("headers routed", message_count=channel.queue_purge("py.hq").method.message_count)

    # Channel errors: each closes its channel with the broker's code and text.
    expect_channel_error(connection, "inequivalent redeclare", lambda c: c.queue_declare("py.work", durable=True))
    expect_channel_error(connection, "passive declare of a missing queue", lambda c: c.queue_declare("py.absent", passive=True))
    expect_channel_error(connection, "inequivalent exchange", lambda c: c.exchange_declare("py.x", exchange_type="direct"))
    expect_channel_error(connection, "delete a non-empty queue if empty", lambda c: c.queue_delete("py.full", if_empty=True))
    expect_channel_error(
        connection, "bad max length", lambda c: c.queue_declare("py.bad", arguments={"x-max-length": "ten"})
    )
    expect_channel_error(connection, "double ack", double_ack)
    other = pika.BlockingConnection(params)
    channel.queue_declare("py.mine", exclusive=True)
    expect_channel_error(other, "exclusive queue of another connection", lambda c: c.queue_declare("py.mine", passive=True))

    # Connection errors: each closes the whole connection.
    expect_connection_error(params, "prefetch size", lambda c: c.basic_qos(prefetch_size=10, prefetch_count=1))
    expect_connection_error(params, "unknown exchange type", lambda c: c.exchange_declare("py.bad", exchange_type="nonsense"))

    deleted = {name: channel.queue_delete(name).method.message_count for name in ["py.work", "py.dead", "py.full", "py.hq"]}
    note("deleted", message_counts=deleted)
    for name in ["py.x", "py.dlx", "py.h"]:
        channel.exchange_delete(name)
    other.close()
    connection.close()
    print(json.dumps(transcript, indent=1, ensure_ascii=False))


def double_ack(channel):
    channel.queue_declare("py.once")
    channel.basic_publish("", "py.once", b"x")
    method, _, _ = channel.basic_get("py.once")
    channel.basic_ack(method.delivery_tag)
    channel.basic_ack(method.delivery_tag)
    # The close comes back as the answer to the next synchronous call.
    channel.queue_declare("py.once", passive=True)


if __name__ == "__main__":
    main(sys.argv[1])
