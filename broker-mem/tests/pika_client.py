"""pika (Python's AMQP 0-9-1 client) against broker-mem's wire server.

Usage: pika_client.py PORT. Publishes with publisher confirms, consumes, acks, nacks with and
without requeue, and checks a refused declare closes only the channel (404). Prints OK and exits
0 when every expectation holds; any failure raises (non-zero exit, traceback on stderr).
"""
import sys

import pika


def main(port):
    params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=port,
        credentials=pika.PlainCredentials("guest", "guest"),
        heartbeat=10,
    )
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.exchange_declare("py.events", exchange_type="fanout", durable=True)
    channel.queue_declare("py.work", durable=True)
    channel.queue_bind("py.work", "py.events")
    channel.confirm_delivery()
    for n in range(3):
        # Raises if the broker nacks or returns the message.
        channel.basic_publish(
            "py.events",
            "",
            f"job-{n}".encode(),
            pika.BasicProperties(delivery_mode=2, message_id=f"m-{n}", content_type="text/plain"),
        )
    declared = channel.queue_declare("py.work", passive=True)
    assert declared.method.message_count == 3, declared.method.message_count

    channel.basic_qos(prefetch_count=1)
    seen = []

    def on_message(ch, method, properties, body):
        seen.append((body, method.redelivered, properties.message_id))
        if body == b"job-0":
            ch.basic_ack(method.delivery_tag)
        elif body == b"job-1" and not method.redelivered:
            ch.basic_nack(method.delivery_tag, requeue=True)
        elif body == b"job-1":
            ch.basic_ack(method.delivery_tag)
        else:
            ch.basic_nack(method.delivery_tag, requeue=False)
        if len(seen) == 4:
            ch.stop_consuming()

    channel.basic_consume("py.work", on_message)
    connection.call_later(10, channel.stop_consuming)
    channel.start_consuming()
    expected = [
        (b"job-0", False, "m-0"),
        (b"job-1", False, "m-1"),
        (b"job-1", True, "m-1"),
        (b"job-2", False, "m-2"),
    ]
    assert seen == expected, seen
    declared = channel.queue_declare("py.work", passive=True)
    assert declared.method.message_count == 0, declared.method.message_count

    # A soft error closes the channel with RabbitMQ's code; the connection stays usable.
    try:
        channel.queue_declare("py.absent", passive=True)
        raise AssertionError("passive declare of a missing queue succeeded")
    except pika.exceptions.ChannelClosedByBroker as closed:
        assert closed.reply_code == 404, closed
    other = connection.channel()
    other.queue_declare("py.work", passive=True)
    connection.close()

    # A prefetch size is a hard error, as on RabbitMQ: 540 closes the connection.
    connection = pika.BlockingConnection(params)
    try:
        connection.channel().basic_qos(prefetch_size=10, prefetch_count=1)
        raise AssertionError("a prefetch size was accepted")
    except pika.exceptions.ConnectionClosedByBroker as closed:
        assert closed.reply_code == 540, closed
        assert closed.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (10)", closed
    print("OK")


if __name__ == "__main__":
    main(int(sys.argv[1]))
