//! The JavaScript client (`crates/ipc-socket/js/ipc_client.mjs`) under Node: its unit tests
//! (`node --test`: codec and frames against the golden vectors, the client against scripted
//! servers, and against a real ipc-socket `Server` process), and a property test in which
//! values generated here are encoded with postcard and must decode to the same values in
//! JavaScript, and encode there to the same bytes. Skipped, saying so, when `node` is absent.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipc_tests::{Peer, Watchdog};
use proptest::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/ipc-socket/js")
}

/// Node's version, or `None` (and a note on stdout) when it is not installed.
fn node() -> Option<String> {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        _ => {
            println!("skipped: `node` is not installed (the JS client tests need Node 20)");
            None
        }
    }
}

#[test]
fn node_unit_tests_pass_against_a_real_server_process() -> Result<()> {
    let Some(version) = node() else { return Ok(()) };
    println!("node {version}");
    let _watchdog = Watchdog::new("node --test", WAIT);
    let mut command = Peer::role_command(
        "socket-server",
        [
            "--address",
            "tcp:127.0.0.1:0",
            "--policy",
            "default",
            "--also",
            "ws://127.0.0.1:0/ipc",
        ],
    )?;
    command.stdin(Stdio::piped());
    let mut server = Peer::spawn("server", command)?;
    let ws_url = server.expect_prefixed("also address=", WAIT)?;
    let address = server.expect_prefixed("ready address=", WAIT)?;
    let host_port = address.strip_prefix("tcp:").context("tcp address")?;
    // A second server that holds tokens, over TCP and WebSocket.
    let dir = ipc_tests::TempDir::new("js-tokens")?;
    let tokens = dir.path().join("tokens");
    let token = "js-token-3e8d1c";
    std::fs::write(&tokens, format!("another-token-aa01\n{token}\n"))?;
    let mut command = Peer::role_command(
        "socket-server",
        [
            "--address",
            "tcp:127.0.0.1:0",
            "--also",
            "ws://127.0.0.1:0/ipc",
            "--tokens-file",
            &tokens.display().to_string(),
        ],
    )?;
    command.stdin(Stdio::piped());
    let mut token_server = Peer::spawn("token server", command)?;
    let token_ws_url = token_server.expect_prefixed("also address=", WAIT)?;
    let token_address = token_server.expect_prefixed("ready address=", WAIT)?;
    let token_host_port = token_address.strip_prefix("tcp:").context("tcp address")?;
    let out = Command::new("node")
        .args([
            // Node 20's WebSocket, for the test against the server's ws:// endpoint.
            "--experimental-websocket",
            "--test",
            "--test-timeout=60000",
            "test/codec.test.mjs",
            "test/client.test.mjs",
        ])
        .current_dir(js_dir())
        .env("IPC_TEST_SERVER", host_port)
        .env("IPC_TEST_WS_URL", &ws_url)
        .env("IPC_TEST_TOKEN_SERVER", token_host_port)
        .env("IPC_TEST_TOKEN_WS_URL", &token_ws_url)
        .env("IPC_TEST_TOKEN", token)
        .output()
        .context("run node --test")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "node --test failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every test ran, the one against the server included (it is skipped without it).
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(stdout.contains("# skipped 0"), "{stdout}");
    // The JS client connected, over TCP and over WebSocket, and closed each time with a
    // normal close frame.
    for _ in 0..2 {
        server.expect_prefixed("connected", WAIT)?;
        let closed = server.expect_prefixed("closed", WAIT)?;
        assert!(closed.ends_with("normal"), "{closed}");
    }
    server.close_stdin();
    server.expect_prefixed("ok", WAIT)?;
    server.wait_success(WAIT)?;
    // The token server let in the two clients with the token and refused the four without,
    // and never printed the token.
    for _ in 0..4 {
        let rejected = token_server.expect_prefixed("rejected", WAIT)?;
        assert!(rejected.contains("token"), "{rejected}");
        assert!(!rejected.contains(token), "a token leaked: {rejected}");
    }
    token_server.close_stdin();
    token_server.expect_prefixed("ok", WAIT)?;
    token_server.wait_success(WAIT)
}

/// The Rust side of `test/roundtrip.mjs`'s `Everything` schema.
#[derive(Serialize, Debug, Clone)]
struct Everything {
    a: u8,
    b: u16,
    c: u32,
    d: u64,
    e: i8,
    f: i16,
    g: i32,
    h: i64,
    i: f32,
    j: f64,
    k: bool,
    l: String,
    m: Option<i32>,
    n: Vec<u16>,
    o: Vec<Variant>,
    p: (u8, String),
    #[serde(with = "serde_bytes")]
    q: Vec<u8>,
    r: u128,
    s: i128,
    t: char,
    u: Option<Option<bool>>,
}

#[derive(Serialize, Debug, Clone)]
enum Variant {
    Unit,
    Newtype(i64),
    Tuple(u8, bool),
    Struct { x: Option<String> },
}

fn float_json(x: f64) -> Value {
    if x.is_nan() {
        json!("NaN")
    } else if x == f64::INFINITY {
        json!("inf")
    } else if x == f64::NEG_INFINITY {
        json!("-inf")
    } else {
        json!(x)
    }
}

/// The JSON form `roundtrip.mjs` reads: integers as decimal strings.
fn to_json(v: &Everything) -> Value {
    let variant = |o: &Variant| match o {
        Variant::Unit => json!({ "variant": "Unit" }),
        Variant::Newtype(n) => json!({ "variant": "Newtype", "value": n.to_string() }),
        Variant::Tuple(a, b) => json!({ "variant": "Tuple", "value": [a.to_string(), b] }),
        Variant::Struct { x } => json!({ "variant": "Struct", "value": { "x": x } }),
    };
    // An f32 goes as the shortest decimal that reads back as the same f32.
    let f32_json = if v.i.is_finite() {
        serde_json::from_str::<Value>(&format!("{}", v.i)).unwrap_or_else(|_| json!(v.i))
    } else {
        float_json(f64::from(v.i))
    };
    json!({
        "a": v.a.to_string(), "b": v.b.to_string(), "c": v.c.to_string(), "d": v.d.to_string(),
        "e": v.e.to_string(), "f": v.f.to_string(), "g": v.g.to_string(), "h": v.h.to_string(),
        "i": f32_json, "j": float_json(v.j), "k": v.k, "l": v.l,
        "m": v.m.map(|m| m.to_string()),
        "n": v.n.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "o": v.o.iter().map(variant).collect::<Vec<_>>(),
        "p": [v.p.0.to_string(), v.p.1],
        "q": v.q, "r": v.r.to_string(), "s": v.s.to_string(), "t": v.t.to_string(),
        // Option<Option<_>>: Some goes as { "some": … } so that Some(None) is not None.
        "u": v.u.map(|inner| json!({ "some": inner })),
    })
}

fn everything() -> impl Strategy<Value = Everything> {
    let variant = prop_oneof![
        Just(Variant::Unit),
        any::<i64>().prop_map(Variant::Newtype),
        (any::<u8>(), any::<bool>()).prop_map(|(a, b)| Variant::Tuple(a, b)),
        proptest::option::of("\\PC{0,8}").prop_map(|x| Variant::Struct { x }),
    ];
    let ints = (
        any::<u8>(),
        any::<u16>(),
        any::<u32>(),
        any::<u64>(),
        any::<i8>(),
        any::<i16>(),
        any::<i32>(),
        any::<i64>(),
    );
    let rest = (
        any::<f32>(),
        any::<f64>(),
        any::<bool>(),
        "\\PC{0,24}",
        any::<Option<i32>>(),
        proptest::collection::vec(any::<u16>(), 0..8),
        proptest::collection::vec(variant, 0..4),
        (any::<u8>(), "\\PC{0,8}"),
        proptest::collection::vec(any::<u8>(), 0..32),
        (
            any::<u128>(),
            any::<i128>(),
            any::<char>(),
            any::<Option<Option<bool>>>(),
        ),
    );
    (ints, rest).prop_map(
        |((a, b, c, d, e, f, g, h), (i, j, k, l, m, n, o, p, q, tail))| {
            let (r, s, t, u) = tail;
            Everything {
                a,
                b,
                c,
                d,
                e,
                f,
                g,
                h,
                i,
                j,
                k,
                l,
                m,
                n,
                o,
                p,
                q,
                r,
                s,
                t,
                u,
            }
        },
    )
}

#[test]
fn the_js_decoder_and_encoder_round_trip_random_rust_values() -> Result<()> {
    if node().is_none() {
        return Ok(());
    }
    let _watchdog = Watchdog::new("js round trip", WAIT);
    let mut command = Command::new("node");
    command
        .arg("test/roundtrip.mjs")
        .current_dir(js_dir())
        .stdin(Stdio::piped());
    let node = std::cell::RefCell::new(Peer::spawn("node roundtrip", command)?);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&everything(), |value| {
        // postcard itself (ipc-core's `encode_to_vec` is postcard's serializer into a Vec).
        let mut bytes = Vec::new();
        ipc_core::encode_to_vec(&value, &mut bytes, 1 << 20)
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let line = json!({ "hex": hex, "value": to_json(&value) }).to_string();
        let mut node = node.borrow_mut();
        let stdin = node
            .stdin()
            .ok_or_else(|| TestCaseError::fail("node stdin closed"))?;
        writeln!(stdin, "{line}").map_err(|err| TestCaseError::fail(err.to_string()))?;
        stdin
            .flush()
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        let reply = node
            .expect_line(WAIT)
            .map_err(|err| TestCaseError::fail(format!("{err:#}")))?;
        let reply: Value =
            serde_json::from_str(&reply).map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(
            &reply["same"],
            &json!(true),
            "{:?}: {}",
            value,
            reply["why"]
        );
        prop_assert_eq!(reply["hex"].as_str(), Some(hex.as_str()), "{:?}", value);
        Ok(())
    });
    if let Err(err) = outcome {
        bail!("{err}");
    }
    let mut node = node.into_inner();
    node.close_stdin();
    node.wait_success(WAIT)
}
