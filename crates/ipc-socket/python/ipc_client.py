#!/usr/bin/env python3
"""A client of ipc_socket::Server in Python, standard library only.

Written from ipc-core's PROTOCOL.md alone (frames, handshake, close, ping/pong, postcard,
and the messaging patterns: subscribe/publish, request/response). It connects over TCP
(`tcp:HOST:PORT`), a socket file (`unix:/path`) or a Linux abstract name (`local:NAME`).

Use as a library:

    client = Client.connect("tcp:127.0.0.1:9000", "ipc-tests.ChatLine/1")
    client.subscribe("chat")
    client.publish("chat", encode_chat_line("py", 0, "hello"))
    kind, topic, payload = client.next_message(timeout=5)
    client.close()

or run `ipc_client.py chat --address A --name NAME --count N --expect a,b`, which behaves like
the `socket-chat` role of the ipc-tests peer (see tests/src/roles/socket.rs), or
`ipc_client.py requests --address A --count N`, which checks that N requests (four in flight
at a time) come back as their echo from the `socket-server` role.
"""

import queue
import socket
import struct
import sys
import threading

MAGIC = b"\xa7\x1c"
VERSION = 1
HEADER = struct.Struct("<2sBBB3sII")  # magic, version, kind, flags, reserved, length, id

HELLO, DATA, CLOSE, PING, PONG = 0x01, 0x02, 0x03, 0x04, 0x05
REQUEST, RESPONSE, SUBSCRIBE, SUBSCRIBE_ACK, UNSUBSCRIBE, PUBLISH = range(0x06, 0x0C)
KNOWN_KINDS = set(range(0x01, 0x0C))
FEATURE_PATTERNS = 1
MAX_NAME_LEN = 1024
DEFAULT_MAX_FRAME_LEN = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The peer broke the protocol, or closed the connection."""


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# --- postcard -------------------------------------------------------------------------

def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(buf: bytes, pos: int):
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ProtocolError("varint runs past the end of the payload")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtocolError("varint longer than 10 bytes")


def encode_str(text: str) -> bytes:
    data = text.encode("utf-8")
    return encode_varint(len(data)) + data


def decode_str(buf: bytes, pos: int):
    length, pos = decode_varint(buf, pos)
    if pos + length > len(buf):
        raise ProtocolError("string runs past the end of the payload")
    return buf[pos:pos + length].decode("utf-8"), pos + length


def encode_chat_line(sender: str, seq: int, text: str) -> bytes:
    """struct ChatLine { from: String, seq: u64, text: String }"""
    return encode_str(sender) + encode_varint(seq) + encode_str(text)


def decode_chat_line(payload: bytes):
    sender, pos = decode_str(payload, 0)
    seq, pos = decode_varint(payload, pos)
    text, pos = decode_str(payload, pos)
    if pos != len(payload):
        raise ProtocolError(f"{len(payload) - pos} trailing bytes after a chat line")
    return sender, seq, text


# --- frames ---------------------------------------------------------------------------

def frame(kind: int, ident: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, 0, b"\0\0\0", len(payload), ident) + payload


def hello_payload(type_name: str, features: int, max_frame_len: int) -> bytes:
    name = type_name.encode("utf-8")
    fingerprint = fnv1a64(name)
    name = name[:MAX_NAME_LEN]  # a real client would cut on a character boundary
    return struct.pack("<IIQH", max_frame_len, features, fingerprint, len(name)) + name


def parse_hello(payload: bytes):
    if len(payload) < 18:
        raise ProtocolError(f"hello payload of {len(payload)} bytes, need 18")
    max_frame_len, features, fingerprint, name_len = struct.unpack_from("<IIQH", payload)
    if len(payload) != 18 + name_len:
        raise ProtocolError("hello name length does not match the payload")
    return max_frame_len, features, fingerprint, payload[18:].decode("utf-8")


def parse_close(payload: bytes):
    if len(payload) < 4:
        raise ProtocolError("close payload shorter than 4 bytes")
    code, reason_len = struct.unpack_from("<HH", payload)
    return code, payload[4:4 + reason_len].decode("utf-8", "replace")


def connect_socket(address: str) -> socket.socket:
    if address.startswith("tcp:"):
        host, _, port = address[4:].rpartition(":")
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if address.startswith("unix:"):
        sock.connect(address[5:])
    elif address.startswith("local:"):
        sock.connect("\0" + address[6:])  # Linux abstract namespace
    else:
        raise ValueError(f"address {address!r} must start with tcp:, unix: or local:")
    return sock


class Client:
    """One connection to an ipc_socket::Server. A reader thread answers pings and queues
    messages; sends may come from any thread."""

    def __init__(self, sock: socket.socket, type_name: str, max_frame_len: int):
        self.sock = sock
        self.type_name = type_name
        self.max_frame_len = max_frame_len
        self.peer_max_frame_len = DEFAULT_MAX_FRAME_LEN
        self.write_lock = threading.Lock()
        self.buf = bytearray()
        self.inbox = queue.Queue()
        self.acks = {}
        self.responses = {}
        self.next_id = 1
        self.reader = None

    @classmethod
    def connect(cls, address: str, type_name: str, max_frame_len=DEFAULT_MAX_FRAME_LEN,
                timeout=5.0):
        sock = connect_socket(address)
        sock.settimeout(timeout)
        client = cls(sock, type_name, max_frame_len)
        sock.sendall(frame(HELLO, 0, hello_payload(type_name, FEATURE_PATTERNS, max_frame_len)))
        kind, _, payload = client.read_frame()
        if kind == CLOSE:
            code, reason = parse_close(payload)
            raise ProtocolError(f"server refused: close code {code}: {reason}")
        if kind != HELLO:
            raise ProtocolError(f"expected a hello frame first, got kind {kind}")
        peer_max, features, fingerprint, name = parse_hello(payload)
        if fingerprint != fnv1a64(type_name.encode("utf-8")):
            client.send(CLOSE, 0, struct.pack("<HH", 3, 0))
            raise ProtocolError(f"server exchanges {name!r}, we expect {type_name!r}")
        if not features & FEATURE_PATTERNS:
            raise ProtocolError("server does not announce the messaging patterns")
        client.peer_max_frame_len = peer_max
        sock.settimeout(None)
        client.reader = threading.Thread(target=client._read_loop, daemon=True)
        client.reader.start()
        return client

    def read_frame(self):
        while True:
            if len(self.buf) >= 1 and self.buf[0] != MAGIC[0] or \
               len(self.buf) >= 2 and self.buf[1] != MAGIC[1]:
                raise ProtocolError("bad magic")
            if len(self.buf) >= HEADER.size:
                magic, version, kind, flags, reserved, length, ident = HEADER.unpack_from(self.buf)
                if version != VERSION:
                    raise ProtocolError(f"peer speaks protocol version {version}")
                if kind not in KNOWN_KINDS:
                    raise ProtocolError(f"unknown frame kind 0x{kind:02x}")
                if flags or reserved != b"\0\0\0":
                    raise ProtocolError("flags or reserved bytes set")
                if length > self.max_frame_len:
                    raise ProtocolError(f"frame of {length} bytes exceeds limit")
                end = HEADER.size + length
                if len(self.buf) >= end:
                    payload = bytes(self.buf[HEADER.size:end])
                    del self.buf[:end]
                    return kind, ident, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError("server closed the stream without a close frame")
            self.buf += chunk

    def send(self, kind: int, ident: int, payload: bytes = b""):
        if len(payload) > self.peer_max_frame_len:
            raise ValueError(f"frame of {len(payload)} bytes exceeds the server's limit")
        with self.write_lock:
            self.sock.sendall(frame(kind, ident, payload))

    def _read_loop(self):
        try:
            while True:
                kind, ident, payload = self.read_frame()
                if kind == PING:
                    self.send(PONG, ident)
                elif kind == PONG:
                    pass
                elif kind == DATA:
                    self.inbox.put(("data", None, payload))
                elif kind == PUBLISH:
                    (topic_len,) = struct.unpack_from("<H", payload)
                    topic = payload[2:2 + topic_len].decode("utf-8")
                    self.inbox.put(("publish", topic, payload[2 + topic_len:]))
                elif kind == SUBSCRIBE_ACK:
                    event = self.acks.pop(ident, None)
                    if event is not None:
                        event.set()
                elif kind == RESPONSE:
                    slot = self.responses.pop(ident, None)
                    if slot is not None:
                        slot.put(payload)
                elif kind == CLOSE:
                    code, reason = parse_close(payload)
                    self.inbox.put(("closed", code, reason))
                    return
                else:
                    raise ProtocolError(f"unexpected frame kind {kind} from the server")
        except (ProtocolError, OSError, struct.error, UnicodeDecodeError) as err:
            self.inbox.put(("error", None, str(err)))

    def _fresh_id(self) -> int:
        with self.write_lock:
            ident = self.next_id
            self.next_id = (self.next_id + 1) & 0xFFFFFFFF or 1
            return ident

    def subscribe(self, prefix: str, timeout=5.0):
        ident = self._fresh_id()
        event = threading.Event()
        self.acks[ident] = event
        self.send(SUBSCRIBE, ident, prefix.encode("utf-8"))
        if not event.wait(timeout):
            raise TimeoutError(f"no acknowledgement of subscription to {prefix!r}")

    def publish(self, topic: str, message: bytes):
        topic_bytes = topic.encode("utf-8")
        self.send(PUBLISH, 0, struct.pack("<H", len(topic_bytes)) + topic_bytes + message)

    def request(self, message: bytes, timeout=5.0) -> bytes:
        ident = self._fresh_id()
        slot = queue.Queue(maxsize=1)
        self.responses[ident] = slot
        self.send(REQUEST, ident, message)
        try:
            return slot.get(timeout=timeout)
        except queue.Empty:
            self.responses.pop(ident, None)
            raise TimeoutError(f"no response to request {ident}")

    def next_message(self, timeout=None):
        """("data", None, payload), ("publish", topic, payload); raises on close or error."""
        item = self.inbox.get(timeout=timeout)
        if item[0] == "closed":
            raise ProtocolError(f"server closed the connection with code {item[1]}: {item[2]}")
        if item[0] == "error":
            raise ProtocolError(item[2])
        return item

    def close(self):
        self.send(CLOSE, 0, struct.pack("<HH", 0, 0))
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def chat(args):
    name, count = args["name"], int(args.get("count", "1000"))
    expected = [n for n in args.get("expect", "").split(",") if n]
    if name not in expected:
        expected.append(name)
    client = Client.connect(args["address"], "ipc-tests.ChatLine/1")
    client.subscribe("chat")
    print("subscribed", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected `go` on stdin")
    failure = []

    def publish_all():
        try:
            for seq in range(count):
                client.publish("chat", encode_chat_line(name, seq, f"{name} says {seq}"))
        except OSError as err:
            failure.append(err)

    publisher = threading.Thread(target=publish_all)
    publisher.start()
    next_seq = {}
    received = 0
    while not all(next_seq.get(sender, 0) >= count for sender in expected):
        kind, topic, payload = client.next_message(timeout=120)
        if kind != "publish" or topic != "chat":
            raise ProtocolError(f"unexpected {kind} on {topic!r}")
        sender, seq, text = decode_chat_line(payload)
        want = next_seq.get(sender, 0)
        if seq != want:
            raise ProtocolError(f"from {sender}: got line {seq} where line {want} was due")
        if text != f"{sender} says {seq}":
            raise ProtocolError(f"from {sender}: line {seq} has text {text!r}")
        next_seq[sender] = want + 1
        received += 1
    publisher.join()
    if failure:
        raise failure[0]
    client.close()
    senders = ",".join(sorted(f"{k}:{v}" for k, v in next_seq.items()))
    print(f"ok received={received} senders={senders}", flush=True)


def requests(args):
    """Sends --count requests, several in flight at once from threads, and checks that each
    response is the echo of its request (the socket-server role echoes requests)."""
    count = int(args.get("count", "100"))
    client = Client.connect(args["address"], "ipc-tests.ChatLine/1")
    failures = []

    def worker(first):
        try:
            for seq in range(first, count, 4):
                line = encode_chat_line("py", seq, f"question {seq}")
                if client.request(line, timeout=30) != line:
                    failures.append(f"response to request {seq} differs")
        except Exception as err:  # reported below
            failures.append(repr(err))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise ProtocolError(failures[0])
    client.close()
    print(f"ok requests={count}", flush=True)


def main(argv):
    commands = {"chat": chat, "requests": requests}
    if len(argv) < 2 or argv[1] not in commands:
        raise SystemExit(__doc__)
    args = {}
    rest = argv[2:]
    for key, value in zip(rest[::2], rest[1::2]):
        args[key.lstrip("-")] = value
    try:
        commands[argv[1]](args)
    except Exception as err:  # the outcome line, as the Rust roles print it
        print(f"error {type(err).__name__}: {err}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
