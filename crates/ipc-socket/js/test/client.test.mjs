// The client against a scripted server in this process (refusals, deadlines, heartbeats,
// reconnection, batches) and, when IPC_TEST_SERVER=host:port is set (the Rust test
// tests/it/js_client.rs sets it), against a real ipc-socket Server process.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import {
  T, encode, decode, IpcClient, IpcError, Kind, CloseCode, FrameDecoder, encodeFrame,
  encodeHello, decodeHello, encodeClose, decodeClose, encodeBatch, decodeBatch,
  FEATURE_PATTERNS, FEATURE_BATCH, FEATURE_TOKEN,
} from "../ipc_client.mjs";
import { tcpTransport } from "./tcp_transport.mjs";

const TYPE_NAME = "ipc-tests.ChatLine/1";
const ChatLine = T.struct([["from", T.str], ["seq", T.u64], ["text", T.str]]);
const line = (seq, text = `line ${seq}`) => ({ from: "js", seq: BigInt(seq), text });

/** A scripted server: `script(peer)` runs per connection; `peer.next()` awaits a frame. */
async function fakeServer(script) {
  const connections = [];
  const server = net.createServer((socket) => {
    const decoder = new FrameDecoder();
    const waiting = [];
    const frames = [];
    const peer = {
      n: connections.length,
      send: (kind, id, payload) => socket.write(encodeFrame(kind, id, payload)),
      hello: (typeName = TYPE_NAME, features = FEATURE_PATTERNS | FEATURE_BATCH) =>
        peer.send(Kind.Hello, 0, encodeHello({ typeName, features })),
      next: () => new Promise((resolve) => (frames.length ? resolve(frames.shift()) : waiting.push(resolve))),
      ended: new Promise((resolve) => socket.on("close", resolve)),
      end: () => socket.end(),
    };
    socket.on("error", () => {});
    socket.on("data", (chunk) => {
      decoder.push(new Uint8Array(chunk));
      for (let f = decoder.next(); f; f = decoder.next()) {
        if (waiting.length) waiting.shift()(f);
        else frames.push(f);
      }
    });
    connections.push(peer);
    script(peer).catch((err) => console.error("script failed", err));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    port,
    connections,
    close: () => new Promise((resolve) => server.close(resolve)),
    options: (extra = {}) => ({
      transport: () => tcpTransport("127.0.0.1", port),
      typeName: TYPE_NAME,
      type: ChatLine,
      reconnect: null,
      ...extra,
    }),
  };
}

test("a refusal (close code 6 as the first frame) fails connect with its code and reason", async () => {
  const server = await fakeServer(async (peer) => {
    peer.send(Kind.Close, 0, encodeClose(CloseCode.REFUSED, "server has reached its maximum of 1 connections"));
    peer.end();
  });
  await assert.rejects(IpcClient.connect(server.options()), (err) => {
    assert.equal(err.kind, "peer-closed");
    assert.equal(err.code, 6);
    assert.match(err.message, /maximum of 1 connections/);
    return true;
  });
  await server.close();
});

test("another message type fails the handshake and is answered with close code 3", async () => {
  let closeFrame;
  const server = await fakeServer(async (peer) => {
    peer.hello("someone.Else/9");
    assert.equal((await peer.next()).kind, Kind.Hello);
    closeFrame = await peer.next();
  });
  await assert.rejects(IpcClient.connect(server.options()), /message type mismatch: peer exchanges `someone.Else\/9`/);
  await server.connections[0].ended;
  assert.equal(closeFrame.kind, Kind.Close);
  assert.equal(decodeClose(closeFrame.payload).code, CloseCode.TYPE_MISMATCH);
  await server.close();
});

test("many requests in flight, answered out of order; a deadline passes; a late response is dropped", async () => {
  const server = await fakeServer(async (peer) => {
    peer.hello();
    assert.equal((await peer.next()).kind, Kind.Hello);
    const requests = [];
    for (let i = 0; i < 20; i++) requests.push(await peer.next());
    for (const r of requests.reverse()) {
      const value = decode(ChatLine, r.payload);
      if (value.text === "never") continue;
      peer.send(Kind.Response, r.id, encode(ChatLine, { ...value, text: value.text.toUpperCase() }));
    }
    // The one that timed out: answered late, after the client's deadline. The client drops it.
    const late = await peer.next();
    assert.equal(decode(ChatLine, late.payload).text, "after");
    const never = requests.find((r) => decode(ChatLine, r.payload).text === "never");
    peer.send(Kind.Response, never.id, encode(ChatLine, line(99, "late")));
    peer.send(Kind.Response, late.id, encode(ChatLine, line(100, "AFTER")));
  });
  const client = await IpcClient.connect(server.options({ heartbeat: null }));
  const replies = [];
  for (let i = 0; i < 19; i++) replies.push(client.request(line(i, `q${i}`), { timeout: 20000 }));
  const timedOut = client.request(line(19, "never"), { timeout: 100 });
  const answers = await Promise.all(replies);
  assert.deepEqual(answers.map((a) => a.text), [...Array(19).keys()].map((i) => `Q${i}`));
  await assert.rejects(timedOut, (err) => err.kind === "timeout" && /no response to request 20 within 100 ms/.test(err.message));
  const after = await client.request(line(20, "after"), { timeout: 20000 });
  assert.equal(after.text, "AFTER");
  client.close();
  await server.close();
});

test("a silent server gets a ping, then close code 8, and the client reports the timeout", async () => {
  const received = [];
  const server = await fakeServer(async (peer) => {
    peer.hello();
    for (;;) {
      const f = await peer.next();
      received.push(f);
      if (f.kind === Kind.Close) return;
    }
  });
  const closed = new Promise((resolve) => {
    server.onclosedResolve = resolve;
  });
  const client = await IpcClient.connect(server.options({ heartbeat: { interval: 50, timeout: 300 } }));
  client.onclosed = (err) => server.onclosedResolve(err);
  const err = await closed;
  assert.equal(err.kind, "peer-died");
  assert.match(err.message, /peer silent for \d+ ms \(heartbeat timeout 300 ms\)/);
  await server.connections[0].ended;
  const kinds = received.map((f) => f.kind);
  assert.deepEqual(kinds, [Kind.Hello, Kind.Ping, Kind.Close]);
  assert.equal(decodeClose(received[2].payload).code, CloseCode.HEARTBEAT_TIMEOUT);
  await server.close();
});

test("pings are answered with pongs echoing the id, even with a payload", async () => {
  let pong;
  const server = await fakeServer(async (peer) => {
    peer.hello();
    assert.equal((await peer.next()).kind, Kind.Hello);
    peer.send(Kind.Ping, 41, Uint8Array.from([1, 2, 3]));
    pong = await peer.next();
    peer.send(Kind.Close, 0, encodeClose(0, "done"));
  });
  const client = await IpcClient.connect(server.options({ heartbeat: null }));
  await server.connections[0].ended;
  assert.equal(pong.kind, Kind.Pong);
  assert.equal(pong.id, 41);
  assert.equal(pong.payload.length, 0);
  assert.equal(client.closed, true);
  await server.close();
});

test("reconnection with back-off resubscribes before anything else", async () => {
  const firstAfterHello = [];
  const server = await fakeServer(async (peer) => {
    peer.hello();
    assert.equal((await peer.next()).kind, Kind.Hello);
    const sub = await peer.next();
    firstAfterHello.push(sub);
    assert.equal(sub.kind, Kind.Subscribe);
    peer.send(Kind.SubscribeAck, sub.id);
    if (peer.n === 0) {
      // Drop the first connection without a close frame.
      peer.end();
      return;
    }
    peer.send(Kind.Publish, 0, (await import("../ipc_client.mjs")).encodePublish("chat/x", encode(ChatLine, line(7))));
  });
  const client = await IpcClient.connect(server.options({ heartbeat: null, reconnect: { initial: 10, max: 100 } }));
  const events = [];
  client.ondisconnected = (err) => events.push(`disconnected ${err.kind}`);
  const publication = new Promise((resolve) => {
    client.onpublication = (topic, value) => resolve([topic, value]);
  });
  client.onreconnected = () => events.push("reconnected");
  await client.subscribe("chat");
  const [topic, value] = await publication;
  assert.equal(topic, "chat/x");
  assert.equal(value.seq, 7n);
  assert.deepEqual(events, ["disconnected peer-died", "reconnected"]);
  assert.equal(firstAfterHello.length, 2);
  assert.equal(new TextDecoder().decode(firstAfterHello[1].payload), "chat");
  client.close();
  await server.close();
});

test("a token goes in an Auth frame right after the Hello; code 11 is final", async () => {
  const seen = [];
  const server = await fakeServer(async (peer) => {
    // Like a server that holds tokens: read the client's Hello and Auth before any Hello.
    const hello = await peer.next();
    const auth = await peer.next();
    seen.push({ features: decodeHello(hello.payload).features, auth });
    if (new TextDecoder().decode(auth.payload) === "the-good-one") {
      peer.hello();
    } else {
      peer.send(Kind.Close, 0, encodeClose(CloseCode.UNAUTHORIZED, "the token presented is not accepted"));
      peer.end();
    }
  });
  const client = await IpcClient.connect(server.options({ heartbeat: null, token: "the-good-one" }));
  assert.equal(seen[0].features & FEATURE_TOKEN, FEATURE_TOKEN);
  assert.equal(seen[0].auth.kind, Kind.Auth);
  assert.equal(seen[0].auth.id, 0);
  assert.ok(!JSON.stringify(client.options).includes("the-good-one"), "the token shows in the options");
  client.close();
  const refused = await IpcClient.connect(server.options({ token: new TextEncoder().encode("a-bad-one") })).then(
    () => null,
    (err) => err,
  );
  assert.equal(refused.kind, "peer-closed");
  assert.equal(refused.code, CloseCode.UNAUTHORIZED);
  assert.ok(!refused.message.includes("a-bad-one"), refused.message);
  // Bad tokens are refused before anything is sent.
  assert.throws(() => new IpcClient(server.options({ token: "" })), (err) => err.kind === "encode");
  assert.throws(() => new IpcClient(server.options({ token: "x".repeat(1025) })), /1 to 1024 bytes, this one is 1025/);
  await server.close();
});

test("a reconnect refused with code 11 ends the client instead of retrying", async () => {
  let attempts = 0;
  const server = await fakeServer(async (peer) => {
    attempts += 1;
    await peer.next();
    await peer.next();
    if (peer.n === 0) {
      peer.hello();
      await new Promise((resolve) => setTimeout(resolve, 20));
      peer.end(); // the first connection drops; the token has been revoked since
      return;
    }
    peer.send(Kind.Close, 0, encodeClose(CloseCode.UNAUTHORIZED, "the token presented is not accepted"));
    peer.end();
  });
  const client = await IpcClient.connect(server.options({ heartbeat: null, token: "t", reconnect: { initial: 5, max: 10 } }));
  const closed = await new Promise((resolve) => {
    client.onclosed = resolve;
  });
  assert.equal(closed.code, CloseCode.UNAUTHORIZED);
  assert.equal(attempts, 2);
  await server.close();
});

test("data messages sent together go out in batch frames; batches from the server arrive", async () => {
  const got = [];
  const server = await fakeServer(async (peer) => {
    peer.hello();
    assert.equal((await peer.next()).kind, Kind.Hello);
    let n = 0;
    while (n < 300) {
      const f = await peer.next();
      got.push(f.kind);
      n += f.kind === Kind.Batch ? decodeBatch(f.payload).length : 1;
    }
    peer.send(Kind.Batch, 0, encodeBatch([encode(ChatLine, line(1)), encode(ChatLine, line(2))]));
  });
  const client = await IpcClient.connect(server.options({ heartbeat: null }));
  const messages = [];
  const two = new Promise((resolve) => {
    client.onmessage = (m) => {
      messages.push(m.seq);
      if (messages.length === 2) resolve();
    };
  });
  for (let i = 0; i < 300; i++) client.send(line(i));
  await two;
  assert.deepEqual(messages, [1n, 2n]);
  assert.ok(got.includes(Kind.Batch), `frames ${got}`);
  assert.ok(got.length < 30, `${got.length} frames for 300 messages`);
  client.close();
  await server.close();
});

const real = process.env.IPC_TEST_SERVER;
test("against a real ipc-socket server process", { skip: real ? false : "IPC_TEST_SERVER not set" }, async () => {
  const [host, port] = real.split(":");
  const client = await IpcClient.connect({ transport: () => tcpTransport(host, Number(port)), typeName: TYPE_NAME, type: ChatLine, reconnect: null });
  // Requests: the server echoes them; 100 in flight at once.
  const replies = await Promise.all([...Array(100).keys()].map((i) => client.request(line(i, `r${i}`), { timeout: 20000 })));
  assert.deepEqual(replies.map((r) => r.text), [...Array(100).keys()].map((i) => `r${i}`));
  // Publish/subscribe: our own publication comes back through the server.
  const publication = new Promise((resolve) => {
    client.onpublication = (topic, value) => resolve([topic, value]);
  });
  await client.subscribe("room/");
  client.publish("room/1", line(5, "hello room"));
  const [topic, value] = await publication;
  assert.equal(topic, "room/1");
  assert.equal(value.text, "hello room");
  // A burst of 500 data messages from the server (in batch frames), in order.
  const burst = [];
  const all = new Promise((resolve) => {
    client.onmessage = (m) => {
      burst.push(m.seq);
      if (burst.length === 500) resolve();
    };
  });
  client.send({ from: "js", seq: 0n, text: "burst:500" });
  await all;
  assert.deepEqual(burst, [...Array(500).keys()].map((i) => BigInt(i)));
  // u64 beyond 2^53 survives the round trip.
  const big = await client.request({ from: "js", seq: (1n << 64n) - 1n, text: "big" }, { timeout: 20000 });
  assert.equal(big.seq, (1n << 64n) - 1n);
  client.close();
});

// A second real server that holds tokens (IPC_TEST_TOKEN_SERVER=host:port, its ws:// endpoint
// IPC_TEST_TOKEN_WS_URL, one of its tokens IPC_TEST_TOKEN): in with it over TCP and over
// WebSocket, refused with code 11 without it or with another.
const tokenServer = process.env.IPC_TEST_TOKEN_SERVER;
const tokenWs = process.env.IPC_TEST_TOKEN_WS_URL;
const tokenSkip = !tokenServer || !tokenWs ? "IPC_TEST_TOKEN_SERVER not set" : !globalThis.WebSocket ? "no WebSocket in this Node (needs --experimental-websocket)" : false;
test("against a real ipc-socket server that holds tokens", { skip: tokenSkip }, async () => {
  const [host, port] = tokenServer.split(":");
  const good = process.env.IPC_TEST_TOKEN;
  const tcp = (token) => ({ transport: () => tcpTransport(host, Number(port)), typeName: TYPE_NAME, type: ChatLine, reconnect: null, token });
  const ws = (token) => ({ url: tokenWs, typeName: TYPE_NAME, type: ChatLine, reconnect: null, token });
  for (const options of [tcp(good), ws(good)]) {
    const client = await IpcClient.connect(options);
    const reply = await client.request(line(1, "with a token"), { timeout: 20000 });
    assert.equal(reply.text, "with a token");
    client.close();
  }
  for (const [options, reason] of [
    [tcp("not-the-token"), "the token presented is not accepted"],
    [ws("not-the-token"), "the token presented is not accepted"],
    [tcp(undefined), "no token presented"],
    [ws(undefined), "no token presented"],
  ]) {
    const err = await IpcClient.connect(options).then(() => null, (e) => e);
    assert.ok(err, `got in with ${reason}`);
    assert.equal(err.kind, "peer-closed", err.message);
    assert.equal(err.code, CloseCode.UNAUTHORIZED, err.message);
    assert.equal(err.reason, reason);
    assert.ok(!err.message.includes(good), err.message);
  }
});

// The same server's ws:// endpoint (IPC_TEST_WS_URL), through Node's own WebSocket
// (`node --experimental-websocket` on Node 20): the browser's code path, byte for byte.
const realWs = process.env.IPC_TEST_WS_URL;
const wsSkip = !realWs ? "IPC_TEST_WS_URL not set" : !globalThis.WebSocket ? "no WebSocket in this Node (needs --experimental-websocket)" : false;
test("against a real ipc-socket server over WebSocket", { skip: wsSkip }, async () => {
  const client = await IpcClient.connect({ url: realWs, typeName: TYPE_NAME, type: ChatLine, reconnect: null });
  const replies = await Promise.all([...Array(50).keys()].map((i) => client.request(line(i, `w${i}`), { timeout: 20000 })));
  assert.deepEqual(replies.map((r) => r.text), [...Array(50).keys()].map((i) => `w${i}`));
  const publication = new Promise((resolve) => {
    client.onpublication = (topic, value) => resolve([topic, value]);
  });
  await client.subscribe("room/");
  client.publish("room/ws", line(6, "hello over ws"));
  const [topic, value] = await publication;
  assert.equal(topic, "room/ws");
  assert.equal(value.text, "hello over ws");
  // A burst of 500 from the server: batch frames grouped into binary messages.
  const burst = [];
  const all = new Promise((resolve) => {
    client.onmessage = (m) => {
      burst.push(m.seq);
      if (burst.length === 500) resolve();
    };
  });
  client.send({ from: "js", seq: 0n, text: "burst:500" });
  await all;
  assert.deepEqual(burst, [...Array(500).keys()].map((i) => BigInt(i)));
  // 600 messages of 140 bytes sent in one task (about 90 KiB) leave as several messages of
  // at most 64 KiB (a server whose frames are small would refuse a longer one): all echoed,
  // in order (600 stays under the server's 1024-frame queue: its echoes are not too slow).
  const many = [];
  const allBack = new Promise((resolve) => {
    client.onmessage = (m) => {
      many.push(m.seq);
      if (many.length === 600) resolve();
    };
  });
  for (let i = 0; i < 600; i++) client.send(line(i, "y".repeat(120)));
  await allBack;
  assert.deepEqual(many, [...Array(600).keys()].map((i) => BigInt(i)));
  // A message larger than one 64 KiB group travels alone and arrives whole.
  const long = "x".repeat(200 * 1024);
  const echoed = await client.request(line(7, long), { timeout: 20000 });
  assert.equal(echoed.text.length, long.length);
  client.close();
});

/**
 * A stand-in for the browser's WebSocket over a TCP socket: each chunk received is one
 * binary message (an ArrayBuffer, as with `binaryType = "arraybuffer"`), and each `send`
 * writes one message's bytes. It lets the client's WebSocket path run in plain Node.
 */
function fakeWebSocketClass(port, { textFirst = false } = {}) {
  return class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.binaryType = "blob";
      this.socket = net.connect({ host: "127.0.0.1", port });
      this.socket.on("connect", () => {
        FakeWebSocket.binaryTypeAtOpen = this.binaryType;
        this.onopen?.();
        if (textFirst) this.onmessage?.({ data: "not a frame" });
      });
      this.socket.on("data", (chunk) => {
        const copy = new Uint8Array(chunk).slice();
        this.onmessage?.({ data: copy.buffer });
      });
      this.socket.on("error", () => this.onerror?.({}));
      this.socket.on("close", () => this.onclose?.({}));
    }
    send(bytes) {
      this.socket.write(bytes);
    }
    close() {
      this.socket.end();
    }
  };
}

test("over a WebSocket: binary messages carry the frames; a text message is a protocol error", async () => {
  const server = await fakeServer(async (peer) => {
    peer.hello();
    assert.equal((await peer.next()).kind, Kind.Hello);
    const r = await peer.next();
    peer.send(Kind.Response, r.id, r.payload);
  });
  const WebSocket = fakeWebSocketClass(server.port);
  const client = await IpcClient.connect({ url: "ws://127.0.0.1/ipc", WebSocket, typeName: TYPE_NAME, type: ChatLine, reconnect: null, heartbeat: null });
  assert.equal(WebSocket.binaryTypeAtOpen, "arraybuffer");
  const reply = await client.request(line(3, "via ws"), { timeout: 20000 });
  assert.equal(reply.text, "via ws");
  client.close();
  await server.close();

  const server2 = await fakeServer(async (peer) => {
    peer.hello();
  });
  await assert.rejects(
    IpcClient.connect({ url: "ws://127.0.0.1/ipc", WebSocket: fakeWebSocketClass(server2.port, { textFirst: true }), typeName: TYPE_NAME, type: ChatLine, reconnect: null }),
    /text message on an ipc WebSocket/,
  );
  await server2.close();
});
