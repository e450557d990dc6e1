#!/usr/bin/env python3
"""A client of ipc_socket::Server in Python, standard library only.

Written from ipc-core's PROTOCOL.md alone (frames, handshake, close, ping/pong, postcard,
the messaging patterns: subscribe/publish, request/response, and tokens). It connects over TCP
(`tcp:HOST:PORT`), TLS (`tls:HOST:PORT`, with Python's `ssl` module: the server's certificate
is checked against the given CA bundle, or the system's, and HOST; a client certificate for
mutual TLS is optional), a socket file (`unix:/path`) or a Linux abstract name (`local:NAME`).

Use as a library:

    client = Client.connect("tcp:127.0.0.1:9000", "ipc-tests.ChatLine/1")
    # or, to a server that holds tokens, over TLS:
    # tls = TlsOptions(ca_file="ca.pem")
    # client = Client.connect("tls:server.example:9000", "ipc-tests.ChatLine/1",
    #                         token=b"s3cret", tls=tls)
    client.subscribe("chat")
    client.publish("chat", encode_chat_line("py", 0, "hello"))
    kind, topic, payload = client.next_message(timeout=5)
    client.close()

or run `ipc_client.py chat --address A --name NAME --count N --expect a,b`, which behaves like
the `socket-chat` role of the ipc-tests peer (see tests/src/roles/socket.rs), or
`ipc_client.py requests --address A --count N`, which checks that N requests (four in flight
at a time) come back as their echo from the `socket-server` role. Both take the options
`--tls-ca FILE`, `--tls-client-cert FILE --tls-client-key FILE` and `--token-file FILE` (the
token is the file's bytes without a trailing newline), named as the Rust roles name them.
"""

import queue
import socket
import ssl
import struct
import sys
import threading

MAGIC = b"\xa7\x1c"
VERSION = 1
HEADER = struct.Struct("<2sBBB3sII")  # magic, version, kind, flags, reserved, length, id

HELLO, DATA, CLOSE, PING, PONG = 0x01, 0x02, 0x03, 0x04, 0x05
REQUEST, RESPONSE, SUBSCRIBE, SUBSCRIBE_ACK, UNSUBSCRIBE, PUBLISH = range(0x06, 0x0C)
AUTH = 0x0D  # client to server only, right after the client's hello
KNOWN_KINDS = set(range(0x01, 0x0D))
FEATURE_PATTERNS = 1
FEATURE_TOKEN = 4  # an Auth frame follows the hello
MAX_TOKEN_LEN = 1024
CLOSE_UNAUTHORIZED = 11
MAX_NAME_LEN = 1024
DEFAULT_MAX_FRAME_LEN = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The peer broke the protocol, or closed the connection."""


class Refused(ProtocolError):
    """The server refused the connection with a close frame instead of its hello; `code`
    is the close code (11: unauthorized, 3: type mismatch, 6: refused)."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"server refused: close code {code}: {reason}")
        self.code = code
        self.reason = reason


class TlsOptions:
    """How a `tls:` connection checks the server and, for mutual TLS, proves who we are.
    Without `ca_file` the system's trusted roots are used; the server name is always the
    address's HOST."""

    def __init__(self, ca_file=None, cert_file=None, key_file=None):
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


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


def split_host_port(rest: str):
    host, _, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 literal
    return host, int(port)


def connect_socket(address: str, tls=None, timeout=5.0) -> socket.socket:
    if address.startswith("tcp:") or address.startswith("tls:"):
        host, port = split_host_port(address[4:])
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if address.startswith("tls:"):
            context = (tls or TlsOptions()).context()
            try:
                # The handshake runs here, under the connect timeout; the name checked is
                # the address's host (a DNS name or an IP address).
                sock = context.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if address.startswith("unix:"):
        sock.connect(address[5:])
    elif address.startswith("local:"):
        sock.connect("\0" + address[6:])  # Linux abstract namespace
    else:
        raise ValueError(f"address {address!r} must start with tcp:, tls:, unix: or local:")
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
                timeout=5.0, token=None, tls=None):
        """Connects and exchanges hellos within `timeout` seconds. `token` (bytes or str,
        1 to 1024 bytes) is presented in an Auth frame right after our hello, for a server
        that holds tokens; `tls` (a TlsOptions) is used for `tls:` addresses. A refusal
        raises Refused with the server's close code."""
        if isinstance(token, str):
            token = token.encode("utf-8")
        if token is not None and not 1 <= len(token) <= MAX_TOKEN_LEN:
            # The length only: a token never appears in an error.
            raise ValueError(f"a token is 1 to {MAX_TOKEN_LEN} bytes, this one is {len(token)}")
        sock = connect_socket(address, tls, timeout)
        sock.settimeout(timeout)
        client = cls(sock, type_name, max_frame_len)
        features = FEATURE_PATTERNS | (FEATURE_TOKEN if token is not None else 0)
        first = frame(HELLO, 0, hello_payload(type_name, features, max_frame_len))
        if token is not None:
            first += frame(AUTH, 0, token)  # at once, without waiting for the server's hello
        sock.sendall(first)
        kind, _, payload = client.read_frame()
        if kind == CLOSE:
            code, reason = parse_close(payload)
            sock.close()
            raise Refused(code, reason)
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
                if kind not in KNOWN_KINDS or kind == AUTH:
                    raise ProtocolError(f"unknown frame kind 0x{kind:02x}")
                if flags or reserved != b"\0\0\0":
                    raise ProtocolError("flags or reserved bytes set")
                if length > self.max_frame_len and not (kind in (HELLO, CLOSE) and length <= 2048):
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


def connect_options(args):
    """The token and TLS options of the command line, named as the Rust roles name them."""
    token = None
    if args.get("token-file"):
        with open(args["token-file"], "rb") as f:
            token = f.read().rstrip(b"\r\n")
    tls = None
    if args.get("tls-ca") or args.get("tls-client-cert"):
        tls = TlsOptions(args.get("tls-ca"), args.get("tls-client-cert"),
                         args.get("tls-client-key"))
    return {"token": token, "tls": tls}


def chat(args):
    name, count = args["name"], int(args.get("count", "1000"))
    expected = [n for n in args.get("expect", "").split(",") if n]
    if name not in expected:
        expected.append(name)
    client = Client.connect(args["address"], "ipc-tests.ChatLine/1", **connect_options(args))
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
    client = Client.connect(args["address"], "ipc-tests.ChatLine/1", **connect_options(args))
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
