#!/usr/bin/env python3
"""Speaks ipc-queue's AMQP message format from Python (stdlib + pika), for the interop test
and as an example for other languages. See ../AMQP.md.

The message type here is the test's `Greeting { id: u32, text: String }`, whose postcard
encoding is: `id` as an unsigned LEB128 varint, then `text` as a varint byte length and
its UTF-8 bytes.

    python3 ipc_amqp.py publish URL QUEUE COUNT   # Greeting{id: i, text: "hello i"}, confirmed
    python3 ipc_amqp.py consume URL QUEUE COUNT   # checks and acks COUNT greetings

Each prints `ok ...` as its last line, or `error ...` and exits 1.
"""

import sys

import pika

CONTENT_TYPE = "application/x-ipc-postcard"
TYPE_NAME = "interop.Greeting/1"


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data, pos):
    value = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def encode_greeting(ident, text):
    raw = text.encode("utf-8")
    return varint(ident) + varint(len(raw)) + raw


def decode_greeting(data):
    ident, pos = read_varint(data, 0)
    length, pos = read_varint(data, pos)
    if pos + length != len(data):
        raise ValueError("length %d does not match the %d bytes left" % (length, len(data) - pos))
    return ident, data[pos:].decode("utf-8")


def publish(url, queue, count):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    for ident in range(count):
        properties = pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=2,
            headers={"ipc-type": TYPE_NAME, "ipc-seq": ident},
        )
        # With confirms on, pika raises if the broker nacks or returns the message.
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=encode_greeting(ident, "hello %d" % ident),
            properties=properties,
            mandatory=True,
        )
    connection.close()
    print("ok published=%d" % count)


def consume(url, queue, count):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=32)
    seen = set()
    for method, properties, body in channel.consume(queue, inactivity_timeout=30):
        if method is None:
            raise RuntimeError("no message for 30 s after %d of %d" % (len(seen), count))
        if properties.content_type != CONTENT_TYPE:
            raise RuntimeError("content type %r" % properties.content_type)
        ident, text = decode_greeting(body)
        if text != "hello %d" % ident:
            raise RuntimeError("greeting %d says %r" % (ident, text))
        seen.add(ident)
        channel.basic_ack(method.delivery_tag)
        if len(seen) == count:
            break
    channel.cancel()
    connection.close()
    if seen != set(range(count)):
        raise RuntimeError("got ids %s" % sorted(seen))
    print("ok consumed=%d" % count)


def main(argv):
    if len(argv) != 5 or argv[1] not in ("publish", "consume"):
        print("error usage: ipc_amqp.py publish|consume URL QUEUE COUNT")
        return 2
    try:
        (publish if argv[1] == "publish" else consume)(argv[2], argv[3], int(argv[4]))
    except Exception as err:  # the outcome line is the contract with the test
        print("error %s: %s" % (type(err).__name__, err))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
