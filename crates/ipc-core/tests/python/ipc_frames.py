#!/usr/bin/env python3
"""A decoder of the ipc wire protocol, written from PROTOCOL.md alone (standard library only).

Usage:
  ipc_frames.py vectors VECTORS_JSON   decode every golden vector, print one line each
  ipc_frames.py sink                   read a Sample stream from stdin (as ipc-peer
                                       frame-source writes it), verify it, print a summary
"""

import json
import struct
import sys

MAGIC = b"\xa7\x1c"
VERSION = 1
HEADER = struct.Struct("<2sBBB3sII")  # magic, version, kind, flags, reserved, length, id
KINDS = {
    1: "hello", 2: "data", 3: "close", 4: "ping", 5: "pong",
    6: "request", 7: "response", 8: "subscribe", 9: "subscribe-ack", 10: "unsubscribe", 11: "publish",
    12: "batch",
}
MAX_FRAME_LEN = 16 * 1024 * 1024


class ProtocolError(Exception):
    pass


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def parse_header(raw: bytes):
    magic, version, kind, flags, reserved, length, ident = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic.hex()}")
    if version != VERSION:
        raise ProtocolError(f"unsupported version {version}")
    if kind not in KINDS:
        raise ProtocolError(f"unknown frame kind 0x{kind:02x}")
    if flags != 0 or reserved != b"\0\0\0":
        raise ProtocolError("flags or reserved bytes set")
    if length > MAX_FRAME_LEN:
        raise ProtocolError(f"frame of {length} bytes exceeds limit of {MAX_FRAME_LEN}")
    return KINDS[kind], length, ident


class Reader:
    """Postcard primitives over a payload."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("payload ended early")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
            if shift > 127:
                raise ProtocolError("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def bytes(self) -> bytes:
        return self.take(self.varint())

    def str(self) -> str:
        return self.bytes().decode("utf-8")

    def f32(self) -> float:
        return struct.unpack("<f", self.take(4))[0]

    def done(self):
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} trailing bytes")


def parse_hello(payload: bytes):
    max_len, features, fingerprint, name_len = struct.unpack_from("<IIQH", payload)
    name = payload[18:].decode("utf-8")
    if len(payload) != 18 + name_len or name_len > 1024:
        raise ProtocolError("bad hello name length")
    return {"max_frame_len": max_len, "features": features, "fingerprint": fingerprint, "name": name}


def parse_close(payload: bytes):
    code, reason_len = struct.unpack_from("<HH", payload)
    if len(payload) != 4 + reason_len:
        raise ProtocolError("bad close reason length")
    return {"code": code, "reason": payload[4:].decode("utf-8")}


def batch_entries(payload: bytes):
    """The messages of a batch frame: u16 LE length, then that many bytes, filling the payload."""
    if len(payload) < 2:
        raise ProtocolError("batch frame holds no message")
    entries, pos = [], 0
    while pos < len(payload):
        if pos + 2 > len(payload):
            raise ProtocolError("stray byte after the last batch entry")
        (n,) = struct.unpack_from("<H", payload, pos)
        if pos + 2 + n > len(payload):
            raise ProtocolError("batch entry runs past its frame")
        entries.append(payload[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return entries


def describe_vector(name: str, raw: bytes) -> str:
    kind, length, ident = parse_header(raw[:16])
    payload = raw[16:]
    if len(payload) != length:
        raise ProtocolError(f"{name}: length {length} but {len(payload)} payload bytes")
    if kind == "hello":
        h = parse_hello(payload)
        assert h["fingerprint"] == fnv1a64(h["name"].encode()), "fingerprint is FNV-1a 64 of the name"
        return f"hello name={h['name']} max_frame_len={h['max_frame_len']} fingerprint=0x{h['fingerprint']:016x}"
    if kind == "close":
        c = parse_close(payload)
        return f"close code={c['code']} reason={c['reason']}"
    if kind in ("ping", "pong", "subscribe-ack"):
        return f"{kind} id={ident}"
    if kind in ("subscribe", "unsubscribe"):
        return f"{kind} id={ident} prefix={payload.decode('utf-8')}"
    if kind == "publish":
        (topic_len,) = struct.unpack_from("<H", payload)
        topic = payload[2 : 2 + topic_len].decode("utf-8")
        r = Reader(payload[2 + topic_len :])
        text = r.str()
        r.done()
        return f"publish topic={topic} message={text}"
    if kind == "batch":
        values = []
        for entry in batch_entries(payload):
            r = Reader(entry)
            values.append(r.varint())
            r.done()
        return f"batch u32 {values}"
    if kind in ("request", "response"):
        r = Reader(payload)
        text = r.str()
        r.done()
        return f"{kind} id={ident} message={text}"
    r = Reader(payload)
    if name == "data-u32":
        out = f"u32 {r.varint()}"
    elif name == "data-chat":
        out = f"chat from={r.str()} text={r.str()}"
    elif name == "data-sample":
        out = f"sample seq={r.varint()} payload={list(r.bytes())}"
    elif name == "data-event-joined":
        variant = r.varint()
        out = f"event variant={variant} user={r.str()} room={r.varint()}"
    elif name == "data-event-reading":
        variant = r.varint()
        some = r.take(1)[0]
        value = r.zigzag() if some else None
        out = f"event variant={variant} reading={value} {r.f32()}"
    else:
        raise ProtocolError(f"unknown vector {name}")
    r.done()
    return out


def read_exact(stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError(f"stream ended after {len(data)} of {n} bytes")
        data += chunk
    return data


def sink(stream) -> str:
    kind, length, _ = parse_header(read_exact(stream, 16))
    if kind != "hello":
        raise ProtocolError(f"expected hello, got {kind}")
    hello = parse_hello(read_exact(stream, length))
    count = total = 0
    while True:
        kind, length, _ = parse_header(read_exact(stream, 16))
        payload = read_exact(stream, length)
        if kind == "close":
            close = parse_close(payload)
            return f"ok type={hello['name']} count={count} bytes={total} close={close['code']}"
        if kind != "data":
            raise ProtocolError(f"unexpected {kind}")
        r = Reader(payload)
        seq = r.varint()
        data = r.bytes()
        r.done()
        if seq != count:
            raise ProtocolError(f"message {count} carries seq {seq}")
        count += 1
        total += len(data)


def main() -> int:
    if sys.argv[1:2] == ["vectors"]:
        with open(sys.argv[2]) as f:
            vectors = json.load(f)["vectors"]
        for v in vectors:
            print(f"{v['name']}: {describe_vector(v['name'], bytes.fromhex(v['hex']))}")
        return 0
    if sys.argv[1:2] == ["sink"]:
        print(sink(sys.stdin.buffer))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
