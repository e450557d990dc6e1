// Reads lines of JSON `{ "hex": postcard bytes from Rust, "value": the value }` on stdin,
// for values of the `Everything` schema below (tests/it/js_client.rs has the Rust type),
// and writes per line `{ "hex": the value encoded here, "same": decode(bytes) equals
// value, "why": ... }`. Integers arrive as decimal strings, floats as numbers or "NaN",
// "inf", "-inf", byte strings as arrays.
import { createInterface } from "node:readline";
import { T, encode, decode } from "../ipc_client.mjs";

export const Everything = T.struct([
  ["a", T.u8], ["b", T.u16], ["c", T.u32], ["d", T.u64], ["e", T.i8], ["f", T.i16],
  ["g", T.i32], ["h", T.i64], ["i", T.f32], ["j", T.f64], ["k", T.bool], ["l", T.str],
  ["m", T.option(T.i32)], ["n", T.seq(T.u16)], ["o", T.seq(T.enum([
    ["Unit", null],
    ["Newtype", T.i64],
    ["Tuple", T.tuple([T.u8, T.bool])],
    ["Struct", T.struct([["x", T.option(T.str)]])],
  ]))],
  ["p", T.tuple([T.u8, T.str])], ["q", T.bytes], ["r", T.u128], ["s", T.i128], ["t", T.char],
  ["u", T.option(T.option(T.bool))],
]);

const special = { NaN: NaN, inf: Infinity, "-inf": -Infinity };

/** The JSON form turned into values the encoder takes. */
function fromJson(v) {
  if (Array.isArray(v)) return v.map(fromJson);
  if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fromJson(x)]));
  if (typeof v === "string" && v in special) return special[v];
  return v;
}

/** Why `decoded` differs from the JSON form `json`, or null. */
function differs(decoded, json, path) {
  if (typeof decoded === "bigint" || (typeof decoded === "number" && typeof json === "string" && /^-?\d+$/.test(json))) {
    return String(decoded) === json ? null : `${path}: ${decoded} != ${json}`;
  }
  if (typeof decoded === "number") {
    const want = typeof json === "string" ? special[json] : json;
    if (Object.is(decoded, want) || Object.is(decoded, Math.fround(want))) return null;
    return `${path}: ${decoded} != ${json}`;
  }
  if (decoded instanceof Uint8Array) return differs([...decoded], json, path);
  if (Array.isArray(decoded)) {
    if (!Array.isArray(json) || json.length !== decoded.length) return `${path}: length differs`;
    for (let i = 0; i < decoded.length; i++) {
      const why = differs(decoded[i], json[i], `${path}[${i}]`);
      if (why) return why;
    }
    return null;
  }
  if (decoded !== null && typeof decoded === "object") {
    if (json === null || typeof json !== "object") return `${path}: ${JSON.stringify(json)} is not an object`;
    const keys = new Set([...Object.keys(decoded), ...Object.keys(json)]);
    for (const k of keys) {
      const why = differs(decoded[k], json[k], `${path}.${k}`);
      if (why) return why;
    }
    return null;
  }
  return decoded === json ? null : `${path}: ${JSON.stringify(decoded)} != ${JSON.stringify(json)}`;
}

const toHex = (bytes) => Buffer.from(bytes).toString("hex");

const lines = createInterface({ input: process.stdin });
for await (const text of lines) {
  const { hex, value } = JSON.parse(text);
  let out;
  try {
    const bytes = Uint8Array.from(Buffer.from(hex, "hex"));
    const decoded = decode(Everything, bytes, "Everything");
    const why = differs(decoded, value, "value");
    out = { hex: toHex(encode(Everything, fromJson(value))), same: why === null, why };
  } catch (err) {
    out = { hex: "", same: false, why: String(err.stack || err) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}
