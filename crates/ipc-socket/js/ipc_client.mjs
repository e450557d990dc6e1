// ipc_client.mjs: a dependency-free JavaScript client of the ipc wire protocol, version 1.
//
// Written from crates/ipc-core/PROTOCOL.md alone. It runs in browsers (over a WebSocket whose
// binary messages carry whole frames, `binaryType = "arraybuffer"`) and in Node 20 (its unit
// tests, and any byte-stream transport handed to `IpcClient.connect`).
//
// What is here:
// - `T`, `encode`, `decode`: a postcard encoder/decoder driven by a schema (strings, integers
//   as varint and zigzag, u64/i64/u128/i128 as BigInt, floats, bools, options, sequences,
//   maps, tuples, structs, enums, bytes, unit);
// - `fnv1a64`, `encodeFrame`, `FrameDecoder`, `encodeHello`/`decodeHello`,
//   `encodeClose`/`decodeClose`, `encodePublish`/`decodePublish`: the frames;
// - `IpcClient`: handshake with the type fingerprint, requests with many in flight and
//   deadlines, subscribe/publish, data messages both ways, heartbeats, close, batch frames
//   both ways, reconnection with jittered exponential back-off that resubscribes, and a
//   token for servers that hold them (the Auth frame). `wss://` URLs work as `ws://` ones:
//   the browser (or Node's WebSocket) does the TLS and checks the server's certificate.

// ---------------------------------------------------------------------------------------
// Errors

/** Every failure of this module: `kind` is one of the names below, `message` says why. */
export class IpcError extends Error {
  /**
   * @param {string} kind "decode", "protocol", "bad-magic", "unsupported-version",
   *   "too-large", "truncated", "type-mismatch", "timeout", "closed", "peer-closed",
   *   "peer-died", "encode"
   * @param {string} message lowercase, with the numbers in it
   * @param {{code?: number, reason?: string}} [extra] the close code and reason of a
   *   "peer-closed" error
   */
  constructor(kind, message, extra = {}) {
    super(message);
    this.name = "IpcError";
    this.kind = kind;
    if (extra.code !== undefined) this.code = extra.code;
    if (extra.reason !== undefined) this.reason = extra.reason;
  }
}

// ---------------------------------------------------------------------------------------
// postcard

const textEncoder = new TextEncoder();
// ignoreBOM keeps a leading U+FEFF: it is a character of the string, not a marker.
const textDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** A growable byte buffer that postcard values are written into. */
export class Writer {
  constructor(capacity = 64) {
    this.buf = new Uint8Array(capacity);
    this.len = 0;
  }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.buf.subarray(0, this.len));
    this.buf = grown;
  }
  byte(b) {
    this.reserve(1);
    this.buf[this.len++] = b;
  }
  bytes(bytes) {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }
  /** Unsigned LEB128 of a non-negative BigInt or safe integer. */
  varint(value) {
    if (typeof value === "number") {
      while (value >= 0x80) {
        this.byte((value % 0x80) | 0x80);
        value = Math.floor(value / 0x80);
      }
      this.byte(value);
      return;
    }
    while (value >= 0x80n) {
      this.byte(Number(value & 0x7fn) | 0x80);
      value >>= 7n;
    }
    this.byte(Number(value));
  }
  finish() {
    return this.buf.slice(0, this.len);
  }
}

/** Reads postcard values from bytes; every read checks that the bytes are there. */
export class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.pos = 0;
  }
  need(n, what) {
    if (this.pos + n > this.bytes.length) {
      throw new IpcError(
        "decode",
        `unexpected end of input: ${what} needs ${n} bytes at offset ${this.pos}, ${this.bytes.length - this.pos} left`,
      );
    }
  }
  byte(what = "a byte") {
    this.need(1, what);
    return this.bytes[this.pos++];
  }
  take(n, what) {
    this.need(n, what);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  /** An unsigned varint of at most `bits` bits, as a BigInt. */
  varint(bits) {
    const maxBytes = Math.ceil(bits / 7);
    let value = 0n;
    for (let i = 0; i < maxBytes; i++) {
      const b = this.byte("a varint");
      value |= BigInt(b & 0x7f) << BigInt(7 * i);
      if ((b & 0x80) === 0) {
        if (value >> BigInt(bits) !== 0n) {
          throw new IpcError("decode", `varint ${value} does not fit in ${bits} bits`);
        }
        return value;
      }
    }
    throw new IpcError("decode", `varint longer than ${maxBytes} bytes for ${bits} bits`);
  }
  /** A length or count: a usize varint that must fit what is left (no huge allocation). */
  length(what, minElementLen = 1) {
    const len = this.varint(64);
    const left = this.bytes.length - this.pos;
    if (len * BigInt(minElementLen) > BigInt(left)) {
      throw new IpcError(
        "decode",
        `${what} of ${len} elements does not fit in the ${left} bytes left`,
      );
    }
    return Number(len);
  }
}

function unsigned(bits) {
  const max = (1n << BigInt(bits)) - 1n;
  const asBig = bits > 32;
  return {
    encode(w, v) {
      const big = BigInt(v);
      if (big < 0n || big > max) throw new IpcError("encode", `${v} is out of range for u${bits}`);
      if (bits === 8) w.byte(Number(big));
      else w.varint(asBig ? big : Number(big));
    },
    decode(r) {
      if (bits === 8) return r.byte("a u8");
      const v = r.varint(bits);
      return asBig ? v : Number(v);
    },
  };
}

function signed(bits) {
  const min = -(1n << BigInt(bits - 1));
  const max = (1n << BigInt(bits - 1)) - 1n;
  const asBig = bits > 32;
  return {
    encode(w, v) {
      const big = BigInt(v);
      if (big < min || big > max) throw new IpcError("encode", `${v} is out of range for i${bits}`);
      if (bits === 8) {
        w.byte(Number(BigInt.asUintN(8, big)));
        return;
      }
      const zigzag = big >= 0n ? big << 1n : ((-big) << 1n) - 1n;
      w.varint(asBig ? zigzag : Number(zigzag));
    },
    decode(r) {
      if (bits === 8) return Number(BigInt.asIntN(8, BigInt(r.byte("an i8"))));
      const z = r.varint(bits);
      const v = z & 1n ? -((z + 1n) >> 1n) : z >> 1n;
      return asBig ? v : Number(v);
    },
  };
}

function float(bytes) {
  return {
    encode(w, v) {
      if (typeof v !== "number") throw new IpcError("encode", `${v} is not a number`);
      const out = new Uint8Array(bytes);
      const view = new DataView(out.buffer);
      if (bytes === 4) view.setFloat32(0, v, true);
      else view.setFloat64(0, v, true);
      w.bytes(out);
    },
    decode(r) {
      const b = r.take(bytes, `an f${bytes * 8}`);
      const view = new DataView(b.buffer, b.byteOffset, bytes);
      return bytes === 4 ? view.getFloat32(0, true) : view.getFloat64(0, true);
    },
  };
}

function decodeUtf8(bytes, what) {
  try {
    return textDecoder.decode(bytes);
  } catch {
    throw new IpcError("decode", `${what} of ${bytes.length} bytes is not valid UTF-8`);
  }
}

/**
 * Postcard types, composed into a schema that both sides agree on (the handshake checks
 * the agreed name's fingerprint, not the schema). Integers of up to 32 bits are numbers;
 * u64, i64, u128, i128 are BigInts (encode accepts numbers too).
 *
 * Values: `T.option(t)` is `null` for None and the value for Some, except that an option of
 * an option (or of unit) gives Some as `{ some: value }`, so `Some(None)` is `{ some: null }`;
 * `T.struct([["a", t], ...])` is an object;
 * `T.tuple([t, ...])` an array; `T.enum([["Name", t | null], ...])` is
 * `{ variant: "Name", value }` (no `value` for a unit variant, `null` type); `T.map(k, v)`
 * a `Map`; `T.bytes` a `Uint8Array`; `T.unit` is `null`.
 */
export const T = {
  bool: {
    encode(w, v) {
      if (typeof v !== "boolean") throw new IpcError("encode", `${v} is not a boolean`);
      w.byte(v ? 1 : 0);
    },
    decode(r) {
      const b = r.byte("a bool");
      if (b > 1) throw new IpcError("decode", `invalid bool byte 0x${b.toString(16).padStart(2, "0")}`);
      return b === 1;
    },
  },
  u8: unsigned(8),
  u16: unsigned(16),
  u32: unsigned(32),
  u64: unsigned(64),
  u128: unsigned(128),
  usize: unsigned(64),
  i8: signed(8),
  i16: signed(16),
  i32: signed(32),
  i64: signed(64),
  i128: signed(128),
  isize: signed(64),
  f32: float(4),
  f64: float(8),
  str: {
    encode(w, v) {
      if (typeof v !== "string") throw new IpcError("encode", `${v} is not a string`);
      const bytes = textEncoder.encode(v);
      w.varint(bytes.length);
      w.bytes(bytes);
    },
    decode(r) {
      const len = r.length("a string");
      return decodeUtf8(r.take(len, "a string"), "a string");
    },
  },
  char: {
    encode(w, v) {
      if (typeof v !== "string" || [...v].length !== 1) {
        throw new IpcError("encode", `${JSON.stringify(v)} is not one character`);
      }
      T.str.encode(w, v);
    },
    decode(r) {
      const len = r.length("a char");
      if (len > 4) throw new IpcError("decode", `a char of ${len} bytes (at most 4)`);
      const text = decodeUtf8(r.take(len, "a char"), "a char");
      if ([...text].length !== 1) throw new IpcError("decode", `${len} bytes are not one char`);
      return text;
    },
  },
  bytes: {
    encode(w, v) {
      const bytes = v instanceof Uint8Array ? v : Uint8Array.from(v);
      w.varint(bytes.length);
      w.bytes(bytes);
    },
    decode(r) {
      const len = r.length("a byte string");
      return r.take(len, "a byte string").slice();
    },
  },
  unit: {
    nullable: true,
    encode() {},
    decode() {
      return null;
    },
  },
  option(inner) {
    // Where the inner type has a null value of its own (an option, unit), Some is wrapped
    // as `{ some: value }` so that `Some(None)` stays apart from `None`.
    const wrap = inner.nullable === true;
    return {
      nullable: true,
      encode(w, v) {
        if (v === null || v === undefined) {
          w.byte(0);
        } else {
          w.byte(1);
          inner.encode(w, wrap ? v.some : v);
        }
      },
      decode(r) {
        const tag = r.byte("an option tag");
        if (tag === 0) return null;
        if (tag === 1) return wrap ? { some: inner.decode(r) } : inner.decode(r);
        throw new IpcError("decode", `invalid option tag 0x${tag.toString(16).padStart(2, "0")}`);
      },
    };
  },
  seq(inner) {
    return {
      encode(w, v) {
        w.varint(v.length);
        for (const item of v) inner.encode(w, item);
      },
      decode(r) {
        // Every element takes at least 0 bytes (a unit), so bound by the bytes left only
        // for types that take at least one: a sequence of units has no allocation per byte.
        const len = r.length("a sequence", inner === T.unit ? 0 : 1);
        const out = new Array(len);
        for (let i = 0; i < len; i++) out[i] = inner.decode(r);
        return out;
      },
    };
  },
  map(key, value) {
    return {
      encode(w, v) {
        const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
        w.varint(entries.length);
        for (const [k, item] of entries) {
          key.encode(w, k);
          value.encode(w, item);
        }
      },
      decode(r) {
        const len = r.length("a map");
        const out = new Map();
        for (let i = 0; i < len; i++) {
          const k = key.decode(r);
          out.set(k, value.decode(r));
        }
        return out;
      },
    };
  },
  tuple(items) {
    return {
      encode(w, v) {
        items.forEach((item, i) => item.encode(w, v[i]));
      },
      decode(r) {
        return items.map((item) => item.decode(r));
      },
    };
  },
  struct(fields) {
    return {
      encode(w, v) {
        for (const [name, type] of fields) {
          if (!(name in v) && type !== T.unit) {
            throw new IpcError("encode", `field ${name} is missing`);
          }
          type.encode(w, v[name]);
        }
      },
      decode(r) {
        const out = {};
        for (const [name, type] of fields) out[name] = type.decode(r);
        return out;
      },
    };
  },
  enum(variants) {
    const index = new Map(variants.map(([name], i) => [name, i]));
    return {
      encode(w, v) {
        const i = index.get(v.variant);
        if (i === undefined) throw new IpcError("encode", `unknown variant ${v.variant}`);
        w.varint(i);
        const type = variants[i][1];
        if (type) type.encode(w, v.value);
      },
      decode(r) {
        const i = r.varint(32);
        if (i >= BigInt(variants.length)) {
          throw new IpcError("decode", `variant index ${i} of an enum with ${variants.length} variants`);
        }
        const [name, type] = variants[Number(i)];
        return type ? { variant: name, value: type.decode(r) } : { variant: name };
      },
    };
  },
};

/** The postcard bytes of `value` of `type`. */
export function encode(type, value) {
  const w = new Writer();
  type.encode(w, value);
  return w.finish();
}

/**
 * The value of `type` that `bytes` hold, all of them; `typeName` (the agreed name) goes in
 * error messages.
 */
export function decode(type, bytes, typeName = "the message type") {
  const r = new Reader(bytes);
  let value;
  try {
    value = type.decode(r);
  } catch (err) {
    if (err instanceof IpcError) {
      throw new IpcError("decode", `payload of ${bytes.length} bytes does not decode as ${typeName}: ${err.message}`);
    }
    throw err;
  }
  if (r.pos !== bytes.length) {
    throw new IpcError("decode", `${bytes.length - r.pos} trailing bytes after a message of ${r.pos} bytes`);
  }
  return value;
}

// ---------------------------------------------------------------------------------------
// Frames

export const MAGIC = [0xa7, 0x1c];
export const PROTOCOL_VERSION = 1;
export const HEADER_LEN = 16;
export const DEFAULT_MAX_FRAME_LEN = 16 * 1024 * 1024;
/** Hello and Close are accepted up to this many payload bytes whatever max_frame_len. */
export const HANDSHAKE_FRAME_LEN = 2048;
export const MAX_NAME_LEN = 1024;
export const FEATURE_PATTERNS = 0x1;
export const FEATURE_BATCH = 0x2;
/** Feature bit 2: an Auth frame (the client's token) follows the client's Hello. */
export const FEATURE_TOKEN = 0x4;
export const MAX_TOKEN_LEN = 1024;
export const MAX_BATCHED_MESSAGE = 4096;
export const MAX_BATCH_LEN = 8 * 1024;
/** The most bytes of whole frames one write (one WebSocket message) groups. */
export const MESSAGE_GROUP_LEN = 64 * 1024;

export const Kind = Object.freeze({
  Hello: 0x01,
  Data: 0x02,
  Close: 0x03,
  Ping: 0x04,
  Pong: 0x05,
  Request: 0x06,
  Response: 0x07,
  Subscribe: 0x08,
  SubscribeAck: 0x09,
  Unsubscribe: 0x0a,
  Publish: 0x0b,
  Batch: 0x0c,
  Auth: 0x0d,
});

export const CloseCode = Object.freeze({
  NORMAL: 0,
  GOING_AWAY: 1,
  PROTOCOL_ERROR: 2,
  TYPE_MISMATCH: 3,
  TOO_LARGE: 4,
  TOO_SLOW: 5,
  REFUSED: 6,
  DECODE_ERROR: 7,
  HEARTBEAT_TIMEOUT: 8,
  RESPONSE_TOO_LARGE: 9,
  FRAME_TIMEOUT: 10,
  UNAUTHORIZED: 11,
});

/** FNV-1a 64 of `bytes` (a Uint8Array or a string, taken as UTF-8), as a BigInt. */
export function fnv1a64(bytes) {
  if (typeof bytes === "string") bytes = textEncoder.encode(bytes);
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  return h;
}

/** One whole frame: the 16-byte header and `payload`. */
export function encodeFrame(kind, id, payload = new Uint8Array(0), maxFrameLen = 0xffffffff) {
  if (payload.length > maxFrameLen && !((kind === Kind.Hello || kind === Kind.Auth || kind === Kind.Close) && payload.length <= HANDSHAKE_FRAME_LEN)) {
    throw new IpcError("too-large", `frame of ${payload.length} bytes exceeds limit of ${maxFrameLen}`);
  }
  const out = new Uint8Array(HEADER_LEN + payload.length);
  const view = new DataView(out.buffer);
  out[0] = MAGIC[0];
  out[1] = MAGIC[1];
  out[2] = PROTOCOL_VERSION;
  out[3] = kind;
  view.setUint32(8, payload.length, true);
  view.setUint32(12, id >>> 0, true);
  out.set(payload, HEADER_LEN);
  return out;
}

/** Shortens UTF-8 `bytes` to at most `max` on a character boundary. */
function shorten(bytes, max) {
  if (bytes.length <= max) return bytes;
  let end = max;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

/** A Hello payload. */
export function encodeHello({ typeName, maxFrameLen = DEFAULT_MAX_FRAME_LEN, features = 0 }) {
  const full = textEncoder.encode(typeName);
  const name = shorten(full, MAX_NAME_LEN);
  const out = new Uint8Array(18 + name.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, maxFrameLen, true);
  view.setUint32(4, features, true);
  view.setBigUint64(8, fnv1a64(full), true);
  view.setUint16(16, name.length, true);
  out.set(name, 18);
  return out;
}

/** The fields of a Hello payload. */
export function decodeHello(payload) {
  if (payload.length < 18) throw new IpcError("protocol", `hello of ${payload.length} bytes (at least 18)`);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
  const nameLen = view.getUint16(16, true);
  if (nameLen > MAX_NAME_LEN) throw new IpcError("protocol", `hello type name of ${nameLen} bytes exceeds ${MAX_NAME_LEN}`);
  if (payload.length !== 18 + nameLen) {
    throw new IpcError("protocol", `hello of ${payload.length} bytes, expected ${18 + nameLen} for a name of ${nameLen} bytes`);
  }
  return {
    maxFrameLen: view.getUint32(0, true),
    features: view.getUint32(4, true),
    fingerprint: view.getBigUint64(8, true),
    typeName: decodeUtf8(payload.subarray(18), "the hello's type name"),
  };
}

/** A Close payload. */
export function encodeClose(code, reason = "") {
  const text = shorten(textEncoder.encode(reason), MAX_NAME_LEN);
  const out = new Uint8Array(4 + text.length);
  const view = new DataView(out.buffer);
  view.setUint16(0, code, true);
  view.setUint16(2, text.length, true);
  out.set(text, 4);
  return out;
}

/** `{ code, reason }` of a Close payload. */
export function decodeClose(payload) {
  if (payload.length < 4) throw new IpcError("protocol", `close of ${payload.length} bytes (at least 4)`);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
  const len = view.getUint16(2, true);
  if (len > MAX_NAME_LEN || payload.length !== 4 + len) {
    throw new IpcError("protocol", `close of ${payload.length} bytes with a reason of ${len} bytes`);
  }
  return { code: view.getUint16(0, true), reason: decodeUtf8(payload.subarray(4), "the close reason") };
}

/** A Publish payload: u16 topic length, topic, message bytes. */
export function encodePublish(topic, message) {
  const t = textEncoder.encode(topic);
  if (t.length > MAX_NAME_LEN) throw new IpcError("encode", `topic of ${t.length} bytes exceeds ${MAX_NAME_LEN}`);
  const out = new Uint8Array(2 + t.length + message.length);
  new DataView(out.buffer).setUint16(0, t.length, true);
  out.set(t, 2);
  out.set(message, 2 + t.length);
  return out;
}

/** `{ topic, message }` of a Publish payload (the message still postcard bytes). */
export function decodePublish(payload) {
  if (payload.length < 2) throw new IpcError("protocol", `publish of ${payload.length} bytes has no topic length`);
  const len = payload[0] | (payload[1] << 8);
  if (len > MAX_NAME_LEN || 2 + len > payload.length) {
    throw new IpcError("protocol", `publish topic of ${len} bytes in a payload of ${payload.length}`);
  }
  return { topic: decodeUtf8(payload.subarray(2, 2 + len), "a topic"), message: payload.subarray(2 + len) };
}

/** A Batch payload of postcard messages (each at most 65535 bytes). */
export function encodeBatch(messages) {
  let len = 0;
  for (const m of messages) len += 2 + m.length;
  const out = new Uint8Array(len);
  let at = 0;
  for (const m of messages) {
    out[at] = m.length & 0xff;
    out[at + 1] = m.length >> 8;
    out.set(m, at + 2);
    at += 2 + m.length;
  }
  return out;
}

/** The entries of a Batch payload. */
export function decodeBatch(payload) {
  if (payload.length < 2) throw new IpcError("protocol", `batch frame of ${payload.length} bytes holds no message`);
  const out = [];
  let at = 0;
  while (at < payload.length) {
    if (at + 2 > payload.length) throw new IpcError("protocol", `batch has ${payload.length - at} stray bytes after its last entry`);
    const len = payload[at] | (payload[at + 1] << 8);
    if (at + 2 + len > payload.length) {
      throw new IpcError("protocol", `batch entry of ${len} bytes runs past the end of a batch of ${payload.length}`);
    }
    out.push(payload.subarray(at + 2, at + 2 + len));
    at += 2 + len;
  }
  return out;
}

const KIND_NAMES = Object.fromEntries(Object.entries(Kind).map(([name, k]) => [k, name]));

/**
 * Splits a byte stream into validated frames (PROTOCOL.md §1, in its order: magic,
 * version, kind, flags, reserved, length). The first error is final: the decoder stays
 * failed. Batch frames are handed out as one frame of kind Batch; `splitBatch` helps.
 */
export class FrameDecoder {
  constructor(maxFrameLen = DEFAULT_MAX_FRAME_LEN) {
    this.maxFrameLen = maxFrameLen;
    // Received bytes are `store[start..end]`; the store grows geometrically, so a large
    // frame arriving in many small pieces costs linear time.
    this.store = new Uint8Array(0);
    this.start = 0;
    this.end = 0;
    this.failed = null;
  }
  /** The bytes received and not yet handed out. */
  get buf() {
    return this.store.subarray(this.start, this.end);
  }
  /** Appends received bytes. */
  push(bytes) {
    if (this.store.length - this.end < bytes.length) {
      const held = this.end - this.start;
      if (this.store.length - held >= bytes.length && this.start >= held) {
        this.store.copyWithin(0, this.start, this.end);
      } else {
        let size = Math.max(1024, this.store.length * 2);
        while (size < held + bytes.length) size *= 2;
        const grown = new Uint8Array(size);
        grown.set(this.store.subarray(this.start, this.end));
        this.store = grown;
      }
      this.start = 0;
      this.end = held;
    }
    this.store.set(bytes, this.end);
    this.end += bytes.length;
  }
  /** Bytes of an incomplete frame held. */
  buffered() {
    return this.end - this.start;
  }
  fail(kind, message) {
    this.failed = new IpcError(kind, message);
    throw this.failed;
  }
  checkPrefix() {
    const b = this.buf;
    for (let i = 0; i < 2 && i < b.length; i++) {
      if (b[i] !== MAGIC[i]) {
        this.fail("bad-magic", `bad magic byte ${i}: 0x${b[i].toString(16).padStart(2, "0")}, expected 0x${MAGIC[i].toString(16)}`);
      }
    }
    if (b.length > 2 && b[2] !== PROTOCOL_VERSION) {
      this.fail("unsupported-version", `peer speaks protocol version ${b[2]}, this end speaks version ${PROTOCOL_VERSION}`);
    }
  }
  /** The next whole frame `{ kind, id, payload }`, or null if more bytes are needed. */
  next() {
    if (this.failed) throw new IpcError(this.failed.kind, "frame decoder stopped after an earlier error");
    this.checkPrefix();
    const b = this.buf;
    if (b.length < HEADER_LEN) return null;
    const kind = b[3];
    if (!(kind in KIND_NAMES)) this.fail("protocol", `unknown frame kind 0x${kind.toString(16).padStart(2, "0")}`);
    if (b[4] !== 0) this.fail("protocol", `unknown frame flags 0x${b[4].toString(16).padStart(2, "0")}`);
    if (b[5] || b[6] || b[7]) {
      const hex = [b[5], b[6], b[7]].map((x) => x.toString(16).padStart(2, "0")).join(" ");
      this.fail("protocol", `reserved header bytes are ${hex}, must be zero`);
    }
    const view = new DataView(b.buffer, b.byteOffset, b.length);
    const len = view.getUint32(8, true);
    const handshake = (kind === Kind.Hello || kind === Kind.Auth || kind === Kind.Close) && len <= HANDSHAKE_FRAME_LEN;
    if (len > this.maxFrameLen && !handshake) {
      this.fail("too-large", `frame of ${len} bytes exceeds limit of ${this.maxFrameLen}`);
    }
    if (b.length < HEADER_LEN + len) return null;
    const frame = { kind, id: view.getUint32(12, true), payload: b.slice(HEADER_LEN, HEADER_LEN + len) };
    this.start += HEADER_LEN + len;
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
    }
    return frame;
  }
  /** At the end of the stream: a "truncated" error if a frame was cut. */
  finish() {
    if (this.buf.length > 0) {
      throw new IpcError("truncated", `stream ended ${this.buf.length} bytes into a frame`);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Transports

/**
 * Adds the `onbytes` / `onend` callbacks to `base` ({ send, close }), keeping what arrives
 * before the client sets them (bytes, or the end) and handing it over when it does.
 */
export function bufferedTransport(base) {
  let early = [];
  let endedEarly;
  let onbytes = null;
  let onend = null;
  return {
    ...base,
    set onbytes(fn) {
      onbytes = fn;
      const held = early;
      early = [];
      for (const bytes of held) fn(bytes);
    },
    get onbytes() {
      return (bytes) => (onbytes ? onbytes(bytes) : early.push(bytes));
    },
    set onend(fn) {
      onend = fn;
      if (endedEarly !== undefined) {
        const err = endedEarly;
        endedEarly = undefined;
        fn(err);
      }
    },
    get onend() {
      return (err) => (onend ? onend(err) : (endedEarly = err));
    },
  };
}

/**
 * A WebSocket transport (browsers; Node 20 with `--experimental-websocket`): each binary
 * message carries whole frames. `url` is `ws://HOST:PORT/PATH` or, for a server's
 * `wss://` address (TLS; the page served over HTTPS), `wss://HOST:PORT/PATH`: the
 * WebSocket implementation does the TLS. Returns a promise of `{ send, close, onbytes, onend }`.
 */
export function webSocketTransport(url, WebSocketImpl = globalThis.WebSocket) {
  return new Promise((resolve, reject) => {
    if (!WebSocketImpl) {
      reject(new IpcError("closed", "no WebSocket implementation available"));
      return;
    }
    const ws = new WebSocketImpl(url);
    ws.binaryType = "arraybuffer";
    const transport = bufferedTransport({
      send(bytes) {
        ws.send(bytes);
      },
      close() {
        ws.close();
      },
    });
    let open = false;
    ws.onopen = () => {
      open = true;
      resolve(transport);
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") {
        transport.onend(new IpcError("protocol", "text message on an ipc WebSocket (only binary messages carry frames)"));
        ws.close();
        return;
      }
      transport.onbytes(new Uint8Array(event.data));
    };
    ws.onerror = () => {
      if (!open) reject(new IpcError("closed", `cannot connect to ${url}`));
    };
    ws.onclose = () => {
      if (!open) reject(new IpcError("closed", `cannot connect to ${url}`));
      else transport.onend(null);
    };
  });
}

// ---------------------------------------------------------------------------------------
// The client

/**
 * A client of an ipc-socket `Server`, speaking the messaging patterns.
 *
 * ```js
 * const Chat = T.struct([["from", T.str], ["seq", T.u64], ["text", T.str]]);
 * const client = await IpcClient.connect({
 *   url: "ws://127.0.0.1:9000/ipc", typeName: "chat.Line/1", type: Chat,
 * });
 * client.onpublication = (topic, line) => console.log(topic, line.text);
 * await client.subscribe("chat");
 * client.publish("chat", { from: "web", seq: 0n, text: "hello" });
 * const reply = await client.request({ from: "web", seq: 1n, text: "?" }, { timeout: 5000 });
 * ```
 *
 * Events are callbacks on the client: `onmessage(value)` (a Data message),
 * `onpublication(topic, value)`, `ondisconnected(error)` (the connection was lost, a
 * reconnection follows if enabled), `onreconnected()`, `onclosed(error | null)` (final).
 */
export class IpcClient {
  /**
   * @param {object} options
   * @param {string} [options.url] a `ws://` or `wss://` URL, used with `webSocketTransport`
   * @param {() => Promise<object>} [options.transport] makes a transport instead of `url`
   * @param {string} options.typeName the agreed message type name (its FNV-1a 64 is checked)
   * @param {object} options.type the postcard schema of the messages (see `T`)
   * @param {number} [options.maxFrameLen] the largest payload accepted (16 MiB)
   * @param {number} [options.handshakeTimeout] ms for the server's hello (5000)
   * @param {{interval: number, timeout: number} | null} [options.heartbeat] ms (1000, 5000)
   * @param {{initial: number, max: number} | null} [options.reconnect] back-off in ms
   *   (50 doubling to 2000); null: no reconnection
   * @param {boolean} [options.batches] announce and send batch frames (true)
   * @param {string | Uint8Array} [options.token] a token (1 to 1024 bytes; a string is
   *   taken as UTF-8) for a server that holds tokens, sent in an Auth frame right after
   *   the Hello. A refusal with close code 11 (unauthorized) or 3 (type mismatch) is
   *   final: the client does not reconnect after it. The token never appears in errors.
   */
  static async connect(options) {
    const client = new IpcClient(options);
    await client.connectOnce();
    return client;
  }

  constructor(options) {
    this.options = {
      maxFrameLen: DEFAULT_MAX_FRAME_LEN,
      handshakeTimeout: 5000,
      heartbeat: { interval: 1000, timeout: 5000 },
      reconnect: { initial: 50, max: 2000 },
      batches: true,
      ...options,
    };
    if (!this.options.transport) {
      const url = this.options.url;
      this.options.transport = () => webSocketTransport(url, this.options.WebSocket);
    }
    if (this.options.token !== undefined && this.options.token !== null) {
      const token = typeof this.options.token === "string" ? textEncoder.encode(this.options.token) : this.options.token;
      if (!(token instanceof Uint8Array) || token.length < 1 || token.length > MAX_TOKEN_LEN) {
        throw new IpcError("encode", `a token is 1 to ${MAX_TOKEN_LEN} bytes, this one is ${token?.length ?? "not a string or Uint8Array"}`);
      }
      // Kept out of `options`, so that logging the options does not show it.
      Object.defineProperty(this, "token", { value: token, enumerable: false });
      delete this.options.token;
    }
    this.typeName = this.options.typeName;
    this.type = this.options.type;
    this.fingerprint = fnv1a64(this.typeName);
    this.nextId = 0;
    this.pending = new Map();
    this.acks = new Map();
    this.prefixes = new Set();
    this.outbox = [];
    this.flushQueued = false;
    this.conn = null;
    this.closed = false;
    this.onmessage = () => {};
    this.onpublication = () => {};
    this.ondisconnected = () => {};
    this.onreconnected = () => {};
    this.onclosed = () => {};
  }

  freshId() {
    this.nextId = (this.nextId % 0xffffffff) + 1;
    return this.nextId;
  }

  /** Connects and exchanges hellos; resolves once the connection is up. */
  async connectOnce() {
    const transport = await this.options.transport();
    const decoder = new FrameDecoder(this.options.maxFrameLen);
    let features = FEATURE_PATTERNS;
    if (this.options.batches) features |= FEATURE_BATCH;
    if (this.token) features |= FEATURE_TOKEN;
    const conn = { transport, decoder, peer: null, up: false, lastHeard: Date.now(), pinged: false, nonce: 0, timer: null, ended: false };
    let hello = encodeFrame(Kind.Hello, 0, encodeHello({ typeName: this.typeName, maxFrameLen: this.options.maxFrameLen, features }));
    if (this.token) {
      // The Auth frame goes with the Hello, without waiting for the server's (PROTOCOL.md, Tokens).
      const auth = encodeFrame(Kind.Auth, 0, this.token);
      const both = new Uint8Array(hello.length + auth.length);
      both.set(hello);
      both.set(auth, hello.length);
      hello = both;
    }
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        fail(new IpcError("timeout", `no hello from peer within ${this.options.handshakeTimeout} ms`), CloseCode.PROTOCOL_ERROR);
      }, this.options.handshakeTimeout);
      const fail = (err, code) => {
        clearTimeout(timer);
        if (code !== undefined) this.sendClose(conn, code, err.message);
        conn.ended = true;
        transport.onbytes = () => {};
        transport.onend = () => {};
        transport.close();
        reject(err);
      };
      transport.onend = (err) => fail(err || new IpcError("peer-died", "peer closed the stream during the handshake"));
      transport.onbytes = (bytes) => {
        conn.lastHeard = Date.now();
        decoder.push(bytes);
        let frame;
        try {
          frame = decoder.next();
        } catch (err) {
          fail(err, err.kind === "too-large" ? CloseCode.TOO_LARGE : CloseCode.PROTOCOL_ERROR);
          return;
        }
        if (!frame) return;
        if (frame.kind === Kind.Close) {
          let close;
          try {
            close = decodeClose(frame.payload);
          } catch (err) {
            fail(err);
            return;
          }
          fail(new IpcError("peer-closed", `server refused: close code ${close.code}: ${close.reason}`, close));
          return;
        }
        if (frame.kind !== Kind.Hello) {
          fail(new IpcError("protocol", `first frame is ${KIND_NAMES[frame.kind]}, not Hello`), CloseCode.PROTOCOL_ERROR);
          return;
        }
        let peer;
        try {
          peer = decodeHello(frame.payload);
        } catch (err) {
          fail(err, CloseCode.PROTOCOL_ERROR);
          return;
        }
        if (peer.fingerprint !== this.fingerprint) {
          fail(
            new IpcError("type-mismatch", `message type mismatch: peer exchanges \`${peer.typeName}\` (fingerprint 0x${peer.fingerprint.toString(16)}), this end expects \`${this.typeName}\` (fingerprint 0x${this.fingerprint.toString(16)})`),
            CloseCode.TYPE_MISMATCH,
          );
          return;
        }
        if ((peer.features & FEATURE_PATTERNS) === 0) {
          fail(new IpcError("protocol", "server's hello does not offer the messaging patterns (feature bit 0)"), CloseCode.PROTOCOL_ERROR);
          return;
        }
        clearTimeout(timer);
        conn.peer = peer;
        conn.up = true;
        transport.onbytes = (more) => this.received(conn, more);
        transport.onend = (err) => this.lost(conn, err || this.endError(conn));
        resolve();
        // Frames that came with the hello.
        this.received(conn, new Uint8Array(0));
      };
      transport.send(hello);
    });
    this.conn = conn;
    this.startHeartbeat(conn);
    // Resubscribe before anything else (PROTOCOL.md §5, reconnection).
    for (const prefix of this.prefixes) this.write(conn, encodeFrame(Kind.Subscribe, this.freshId(), textEncoder.encode(prefix)));
  }

  endError(conn) {
    try {
      conn.decoder.finish();
    } catch (err) {
      return err;
    }
    return new IpcError("peer-died", "server closed the stream without a close frame");
  }

  write(conn, bytes) {
    if (conn.ended) throw new IpcError("closed", "connection is closed");
    conn.transport.send(bytes);
  }

  sendClose(conn, code, reason) {
    try {
      conn.transport.send(encodeFrame(Kind.Close, 0, encodeClose(code, reason)));
    } catch {
      // The transport is gone: nothing to tell.
    }
  }

  startHeartbeat(conn) {
    const hb = this.options.heartbeat;
    if (!hb) return;
    const tick = Math.max(10, Math.min(hb.interval, hb.timeout) / 4);
    conn.timer = setInterval(() => {
      const silent = Date.now() - conn.lastHeard;
      if (silent >= hb.timeout) {
        const err = new IpcError("peer-died", `peer silent for ${silent} ms (heartbeat timeout ${hb.timeout} ms)`);
        this.sendClose(conn, CloseCode.HEARTBEAT_TIMEOUT, err.message);
        this.lost(conn, err);
      } else if (silent >= hb.interval && !conn.pinged) {
        conn.pinged = true;
        conn.nonce = (conn.nonce + 1) >>> 0;
        try {
          this.write(conn, encodeFrame(Kind.Ping, conn.nonce));
        } catch (err) {
          this.lost(conn, err);
        }
      }
    }, tick);
  }

  received(conn, bytes) {
    if (conn.ended) return;
    if (bytes.length > 0) {
      conn.lastHeard = Date.now();
      conn.pinged = false;
      conn.decoder.push(bytes);
    }
    try {
      for (;;) {
        const frame = conn.decoder.next();
        if (!frame) return;
        if (this.handle(conn, frame) === "stop") return;
      }
    } catch (err) {
      const code = {
        "too-large": CloseCode.TOO_LARGE,
        "decode": CloseCode.DECODE_ERROR,
        "type-mismatch": CloseCode.TYPE_MISMATCH,
      }[err.kind] ?? CloseCode.PROTOCOL_ERROR;
      if (err instanceof IpcError) this.sendClose(conn, code, err.message);
      this.lost(conn, err);
    }
  }

  handle(conn, frame) {
    switch (frame.kind) {
      case Kind.Data:
        this.onmessage(decode(this.type, frame.payload, this.typeName));
        return;
      case Kind.Batch:
        for (const entry of decodeBatch(frame.payload)) this.onmessage(decode(this.type, entry, this.typeName));
        return;
      case Kind.Publish: {
        const { topic, message } = decodePublish(frame.payload);
        this.onpublication(topic, decode(this.type, message, this.typeName));
        return;
      }
      case Kind.Response: {
        const waiter = this.pending.get(frame.id);
        // A response nobody waits for any more (its deadline passed) is dropped.
        if (!waiter) return;
        this.pending.delete(frame.id);
        clearTimeout(waiter.timer);
        try {
          waiter.resolve(decode(this.type, frame.payload, this.typeName));
        } catch (err) {
          waiter.reject(err);
        }
        return;
      }
      case Kind.SubscribeAck: {
        const ack = this.acks.get(frame.id);
        if (ack) {
          this.acks.delete(frame.id);
          ack();
        }
        return;
      }
      case Kind.Ping:
        // Any payload is ignored; the pong is empty (PROTOCOL.md §5).
        this.write(conn, encodeFrame(Kind.Pong, frame.id));
        return;
      case Kind.Pong:
        return;
      case Kind.Close: {
        const close = decodeClose(frame.payload);
        const err = close.code === CloseCode.NORMAL
          ? new IpcError("peer-closed", `server closed the connection: ${close.reason}`, close)
          : new IpcError("peer-closed", `server closed the connection with code ${close.code}: ${close.reason}`, close);
        this.lost(conn, err);
        return "stop";
      }
      default:
        throw new IpcError("protocol", `unexpected ${KIND_NAMES[frame.kind]} frame from the server`);
    }
  }

  lost(conn, err) {
    if (conn.ended) return;
    conn.ended = true;
    clearInterval(conn.timer);
    conn.transport.onbytes = () => {};
    conn.transport.onend = () => {};
    conn.transport.close();
    if (this.conn === conn) this.conn = null;
    for (const [, waiter] of this.pending) {
      clearTimeout(waiter.timer);
      waiter.reject(new IpcError(err.kind ?? "closed", `connection lost: ${err.message}`, err));
    }
    this.pending.clear();
    this.acks.clear();
    this.outbox = [];
    if (this.closed) return;
    if (!this.options.reconnect) {
      this.closed = true;
      this.onclosed(err);
      return;
    }
    this.ondisconnected(err);
    this.reconnect(0);
  }

  reconnect(attempt) {
    const { initial, max } = this.options.reconnect;
    const ceiling = Math.min(initial * 2 ** attempt, max);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.reconnectTimer = setTimeout(async () => {
      if (this.closed) return;
      try {
        await this.connectOnce();
      } catch (err) {
        // A wrong token or message type will not fix itself: the refusal is final.
        if (err.kind === "peer-closed" && (err.code === CloseCode.UNAUTHORIZED || err.code === CloseCode.TYPE_MISMATCH)) {
          if (!this.closed) {
            this.closed = true;
            this.onclosed(err);
          }
          return;
        }
        if (!this.closed) this.reconnect(attempt + 1);
        return;
      }
      if (this.closed) {
        this.close();
        return;
      }
      this.onreconnected();
    }, delay);
  }

  connection() {
    if (this.closed) throw new IpcError("closed", "client is closed");
    if (!this.conn) throw new IpcError("closed", "not connected (reconnecting)");
    return this.conn;
  }

  /** Sends a Data message. Messages sent in one task go out together, in batches. */
  send(value) {
    const conn = this.connection();
    const payload = encode(this.type, value);
    if (payload.length > conn.peer.maxFrameLen) {
      throw new IpcError("too-large", `frame of ${payload.length} bytes exceeds limit of ${conn.peer.maxFrameLen}`);
    }
    this.outbox.push(payload);
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(() => this.flush());
    }
  }

  /** Writes the queued Data messages: in batch frames when the server accepts them. */
  flush() {
    this.flushQueued = false;
    const conn = this.conn;
    const messages = this.outbox;
    this.outbox = [];
    if (!conn || conn.ended || messages.length === 0) return;
    const batches = this.options.batches && (conn.peer.features & FEATURE_BATCH) !== 0;
    const limit = Math.min(MAX_BATCH_LEN, conn.peer.maxFrameLen);
    const parts = [];
    let group = [];
    let groupLen = 0;
    const seal = () => {
      if (group.length === 1) parts.push(encodeFrame(Kind.Data, 0, group[0]));
      else if (group.length > 1) parts.push(encodeFrame(Kind.Batch, 0, encodeBatch(group)));
      group = [];
      groupLen = 0;
    };
    for (const m of messages) {
      if (!batches || m.length > MAX_BATCHED_MESSAGE || 2 + m.length > limit) {
        seal();
        parts.push(encodeFrame(Kind.Data, 0, m));
        continue;
      }
      if (groupLen + 2 + m.length > limit) seal();
      group.push(m);
      groupLen += 2 + m.length;
    }
    seal();
    // Whole frames, grouped into writes of at most MESSAGE_GROUP_LEN bytes (a larger frame
    // alone): over a WebSocket each write is one message, which the peer accepts up to
    // max(max_frame_len + 16, 65536) bytes (PROTOCOL.md, "WebSocket mapping").
    try {
      let start = 0;
      while (start < parts.length) {
        let end = start + 1;
        let total = parts[start].length;
        while (end < parts.length && total + parts[end].length <= MESSAGE_GROUP_LEN) {
          total += parts[end].length;
          end += 1;
        }
        const out = new Uint8Array(total);
        let at = 0;
        for (const p of parts.slice(start, end)) {
          out.set(p, at);
          at += p.length;
        }
        this.write(conn, out);
        start = end;
      }
    } catch (err) {
      this.lost(conn, err);
    }
  }

  /**
   * Sends a request and resolves with its response; rejects with a "timeout" error after
   * `timeout` ms (a late response is then dropped) or when the connection is lost.
   */
  request(value, { timeout = 5000 } = {}) {
    const conn = this.connection();
    const payload = encode(this.type, value);
    const id = this.freshId();
    const frame = encodeFrame(Kind.Request, id, payload, conn.peer.maxFrameLen);
    this.flush();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new IpcError("timeout", `no response to request ${id} within ${timeout} ms`));
      }, timeout);
      this.pending.set(id, { resolve, reject, timer });
      try {
        this.write(conn, frame);
      } catch (err) {
        this.lost(conn, err);
      }
    });
  }

  /** Subscribes to a topic prefix; resolves on the server's acknowledgement. */
  subscribe(prefix, { timeout = 5000 } = {}) {
    const conn = this.connection();
    const bytes = textEncoder.encode(prefix);
    if (bytes.length > MAX_NAME_LEN) throw new IpcError("encode", `topic prefix of ${bytes.length} bytes exceeds ${MAX_NAME_LEN}`);
    this.prefixes.add(prefix);
    // Data messages sent before go out before the subscription, in order.
    this.flush();
    const id = this.freshId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.acks.delete(id);
        reject(new IpcError("timeout", `no acknowledgement of subscription ${id} within ${timeout} ms`));
      }, timeout);
      this.acks.set(id, () => {
        clearTimeout(timer);
        resolve();
      });
      this.write(conn, encodeFrame(Kind.Subscribe, id, bytes));
    });
  }

  /** Removes one prefix (not acknowledged; publications in flight may still arrive). */
  unsubscribe(prefix) {
    this.prefixes.delete(prefix);
    const conn = this.connection();
    this.flush();
    this.write(conn, encodeFrame(Kind.Unsubscribe, 0, textEncoder.encode(prefix)));
  }

  /** Publishes `value` on `topic` to every subscriber of a prefix of it. */
  publish(topic, value) {
    const conn = this.connection();
    this.flush();
    this.write(conn, encodeFrame(Kind.Publish, 0, encodePublish(topic, encode(this.type, value)), conn.peer.maxFrameLen));
  }

  /** Sends Close code 0 after what is queued, and closes; no reconnection follows. */
  close(reason = "bye") {
    if (this.closed && !this.conn) return;
    this.flush();
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    const conn = this.conn;
    if (conn) {
      this.sendClose(conn, CloseCode.NORMAL, reason);
      this.lost(conn, new IpcError("closed", "client closed"));
    }
    this.onclosed(null);
  }
}
