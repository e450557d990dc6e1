// The codec and the frames against the golden vectors of crates/ipc-core/tests/golden.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  T, encode, decode, fnv1a64, encodeFrame, FrameDecoder, Kind, encodeHello, decodeHello,
  encodeClose, decodeClose, encodePublish, decodePublish, encodeBatch, decodeBatch, IpcError,
} from "../ipc_client.mjs";

const vectors = JSON.parse(
  readFileSync(new URL("../../../ipc-core/tests/golden/vectors.json", import.meta.url), "utf8"),
).vectors;
const hex = (name) => {
  const v = vectors.find((v) => v.name === name);
  assert.ok(v, `vector ${name}`);
  return Uint8Array.from(v.hex.split(/\s+/).map((b) => parseInt(b, 16)));
};
const frameOf = (bytes) => {
  const d = new FrameDecoder();
  d.push(bytes);
  const f = d.next();
  assert.ok(f);
  assert.equal(d.buffered(), 0);
  return f;
};

const Chat = T.struct([["from", T.str], ["text", T.str]]);
const Sample = T.struct([["seq", T.u64], ["payload", T.bytes]]);
const Event = T.enum([
  ["Joined", T.struct([["user", T.str], ["room", T.u16]])],
  ["Left", T.u32],
  ["Reading", T.tuple([T.option(T.i32), T.f32])],
]);

test("fnv1a64 matches PROTOCOL.md", () => {
  assert.equal(fnv1a64("chat.Message/1"), 0xd90eede06cf7fb36n);
});

test("hello vector", () => {
  const bytes = encodeFrame(Kind.Hello, 0, encodeHello({ typeName: "chat.Message/1", maxFrameLen: 16 * 1024 * 1024, features: 0 }));
  assert.deepEqual(bytes, hex("hello"));
  const hello = decodeHello(frameOf(hex("hello")).payload);
  assert.deepEqual(hello, { maxFrameLen: 16777216, features: 0, fingerprint: 0xd90eede06cf7fb36n, typeName: "chat.Message/1" });
});

test("data vectors encode and decode", () => {
  const cases = [
    ["data-u32", T.u32, 42],
    ["data-chat", Chat, { from: "ann", text: "hi" }],
    ["data-sample", Sample, { seq: 300n, payload: Uint8Array.from([1, 2, 3]) }],
    ["data-event-joined", Event, { variant: "Joined", value: { user: "bob", room: 3 } }],
    ["data-event-reading", Event, { variant: "Reading", value: [-2, 1.5] }],
  ];
  for (const [name, type, value] of cases) {
    assert.deepEqual(encodeFrame(Kind.Data, 0, encode(type, value)), hex(name), name);
    const frame = frameOf(hex(name));
    assert.equal(frame.kind, Kind.Data);
    assert.deepEqual(decode(type, frame.payload), value, name);
  }
});

test("control and pattern vectors", () => {
  assert.deepEqual(encodeFrame(Kind.Ping, 7), hex("ping"));
  assert.deepEqual(encodeFrame(Kind.Pong, 7), hex("pong"));
  assert.deepEqual(encodeFrame(Kind.Close, 0, encodeClose(0, "bye")), hex("close"));
  assert.deepEqual(decodeClose(frameOf(hex("close")).payload), { code: 0, reason: "bye" });
  assert.deepEqual(encodeFrame(Kind.Request, 5, encode(T.str, "hi")), hex("request"));
  assert.deepEqual(encodeFrame(Kind.Response, 5, encode(T.str, "hi!")), hex("response"));
  const sub = new TextEncoder().encode("chat");
  assert.deepEqual(encodeFrame(Kind.Subscribe, 3, sub), hex("subscribe"));
  assert.deepEqual(encodeFrame(Kind.SubscribeAck, 3), hex("subscribe-ack"));
  assert.deepEqual(encodeFrame(Kind.Unsubscribe, 0, sub), hex("unsubscribe"));
  assert.deepEqual(encodeFrame(Kind.Publish, 0, encodePublish("chat", encode(T.str, "hi"))), hex("publish"));
  const published = decodePublish(frameOf(hex("publish")).payload);
  assert.equal(published.topic, "chat");
  assert.equal(decode(T.str, published.message), "hi");
  const batch = encodeFrame(Kind.Batch, 0, encodeBatch([encode(T.u32, 42), encode(T.u32, 300)]));
  assert.deepEqual(batch, hex("batch"));
  assert.deepEqual(decodeBatch(frameOf(hex("batch")).payload).map((e) => decode(T.u32, e)), [42, 300]);
});

test("every vector decodes as a frame of the stream of all vectors", () => {
  const d = new FrameDecoder();
  for (const v of vectors) d.push(hex(v.name));
  let n = 0;
  while (d.next()) n++;
  assert.equal(n, vectors.length);
});

test("integers: varint, zigzag, BigInt and range checks", () => {
  assert.deepEqual(encode(T.u16, 300), Uint8Array.from([0xac, 0x02]));
  assert.deepEqual(encode(T.i32, -1), Uint8Array.from([1]));
  assert.deepEqual(encode(T.i32, 1), Uint8Array.from([2]));
  assert.deepEqual(encode(T.i64, -2n), Uint8Array.from([3]));
  const maxU64 = (1n << 64n) - 1n;
  assert.equal(decode(T.u64, encode(T.u64, maxU64)), maxU64);
  assert.equal(decode(T.i64, encode(T.i64, -(1n << 63n))), -(1n << 63n));
  assert.equal(decode(T.u128, encode(T.u128, (1n << 128n) - 1n)), (1n << 128n) - 1n);
  assert.equal(decode(T.i8, encode(T.i8, -128)), -128);
  assert.throws(() => encode(T.u8, 256), IpcError);
  assert.throws(() => encode(T.u32, -1), IpcError);
  assert.throws(() => decode(T.u16, Uint8Array.from([0xff, 0xff, 0x04])), /does not fit in 16 bits/);
  assert.throws(() => decode(T.u32, Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0x01])), /longer than 5 bytes/);
});

test("bad input is a clear error, never a huge allocation", () => {
  assert.throws(() => decode(T.bool, Uint8Array.from([2])), /invalid bool byte 0x02/);
  assert.throws(() => decode(T.option(T.u8), Uint8Array.from([5])), /invalid option tag/);
  assert.throws(() => decode(T.str, Uint8Array.from([2, 0xff, 0xfe])), /not valid UTF-8/);
  // A sequence claiming 2^63 elements in 10 bytes.
  const claim = Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
  assert.throws(() => decode(T.seq(T.u32), claim), /does not fit in the 0 bytes left/);
  assert.throws(() => decode(T.u32, Uint8Array.from([1, 2])), /1 trailing bytes after a message of 1 bytes/);
  assert.throws(() => decode(Chat, Uint8Array.from([3, 97])), /a string of 3 elements does not fit in the 1 bytes left/);
  assert.throws(() => decode(T.f64, Uint8Array.from([1, 2])), /unexpected end of input: an f64 needs 8 bytes at offset 0, 2 left/);
  assert.throws(() => decode(Event, Uint8Array.from([7])), /variant index 7 of an enum with 3 variants/);
});

test("frame validation order and limits", () => {
  const bad = (bytes, pattern, maxFrameLen) => {
    const d = new FrameDecoder(maxFrameLen);
    d.push(bytes);
    assert.throws(() => d.next(), pattern);
    assert.throws(() => d.next(), /stopped after an earlier error/);
  };
  bad(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"), /bad magic byte 0: 0x47/);
  const ping = encodeFrame(Kind.Ping, 1);
  const mutate = (i, b) => {
    const out = ping.slice();
    out[i] = b;
    return out;
  };
  bad(mutate(2, 9), /peer speaks protocol version 9/);
  bad(mutate(3, 0x7e), /unknown frame kind 0x7e/);
  bad(mutate(4, 0x80), /unknown frame flags 0x80/);
  bad(mutate(6, 1), /reserved header bytes are 00 01 00, must be zero/);
  bad(encodeFrame(Kind.Data, 0, new Uint8Array(1001)), /frame of 1001 bytes exceeds limit of 1000/, 1000);
  // Hello and Close up to 2048 bytes pass whatever the limit.
  const d = new FrameDecoder(16);
  d.push(encodeFrame(Kind.Close, 0, encodeClose(6, "x".repeat(1000))));
  assert.equal(decodeClose(d.next().payload).reason.length, 1000);
  // A frame split anywhere arrives whole.
  const all = hex("data-chat");
  for (let cut = 0; cut <= all.length; cut++) {
    const d2 = new FrameDecoder();
    d2.push(all.subarray(0, cut));
    if (cut < all.length) assert.equal(d2.next(), null);
    d2.push(all.subarray(cut));
    assert.deepEqual(decode(Chat, d2.next().payload), { from: "ann", text: "hi" });
  }
  const cutShort = new FrameDecoder();
  cutShort.push(all.subarray(0, 5));
  assert.equal(cutShort.next(), null);
  assert.throws(() => cutShort.finish(), /stream ended 5 bytes into a frame/);
  assert.throws(() => decodeBatch(Uint8Array.from([5, 0, 1])), /runs past the end/);
  assert.throws(() => decodeBatch(Uint8Array.from([1])), /holds no message/);
});

test("strings keep a leading U+FEFF; nested options keep Some(None)", () => {
  const bom = "\ufeffx";
  assert.equal(decode(T.str, encode(T.str, bom)), bom);
  assert.equal(decode(T.char, encode(T.char, "\ufeff")), "\ufeff");
  const nested = T.option(T.option(T.bool));
  assert.deepEqual(encode(nested, null), Uint8Array.from([0]));
  assert.deepEqual(encode(nested, { some: null }), Uint8Array.from([1, 0]));
  assert.deepEqual(encode(nested, { some: true }), Uint8Array.from([1, 1, 1]));
  assert.deepEqual(decode(nested, Uint8Array.from([1, 0])), { some: null });
  assert.equal(decode(nested, Uint8Array.from([0])), null);
});
