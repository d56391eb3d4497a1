"""What the Python client scenarios share: the transcript they print, and how a value a client
decoded is written into it (tests/wire_clients.rs compares transcripts between brokers)."""
import datetime
import decimal
import json
import re

transcript = []


def note(step, **what):
    """Adds one step's observations to the transcript."""
    transcript.append({"step": step, **what})


def same_vhost(text):
    """A broker names the vhost in its texts; the two runs use different ones."""
    return re.sub(r"in vhost '[^']*'", "in vhost 'V'", str(text))


def plain(value, key=None):
    """A decoded value as JSON, keeping the Python type the client decoded it to."""
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
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": list(value)}
    if isinstance(value, dict):
        return {k: plain(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return {type(value).__name__: repr(value)}


def count_when(read_count, sleep, queue, want):
    """A queue's ready count (`read_count()`) once it is `want`: RabbitMQ requeues, dead-letters
    and enqueues unconfirmed publishes in the background (through its delegates), so a count or
    a get just after may not see it yet. Raises after 10 s, naming what it saw."""
    for _ in range(500):
        count = read_count()
        if count == want:
            return count
        sleep(0.02)
    raise AssertionError(f"{queue} holds {count} ready messages after 10 s, not {want}")


def print_transcript():
    print(json.dumps(transcript, indent=1, ensure_ascii=False))
