//! What a peer process does. The `ipc-peer` binary and `cargo xtask` both dispatch here, so
//! tests and scenarios run the very same code.
//!
//! Every role prints its outcome as the last line of its stdout: `ok key=value ...` or
//! `error <kind>: <message>`, and exits 0 or 1. A panic (exit 101) is always a bug.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ipc_core::{Close, CloseCode, ErrorKind, FrameDecoder, FrameKind, Hello, Limits, MessageType};
use serde::{Deserialize, Serialize};

use crate::{Checksum, fill_payload};

mod amqp;
pub mod pipeline;
mod queue;
mod shm;
mod socket;
mod web;

pub use socket::{CHAT_TYPE, ChatLine, chat_config};

pub(crate) use amqp::AmqpItem;

/// The message of the frame-stream roles. `payload` borrows from the receive buffer.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Sample<'a> {
    /// Position in the stream, from 0.
    pub seq: u64,
    /// `fill_payload(seq)` bytes; `serde_bytes` makes postcard copy them in one go
    /// (a plain `&[u8]` is a sequence, encoded byte by byte).
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

/// The explicit wire name of [`Sample`], so peers built separately agree.
pub const SAMPLE_TYPE: &str = "ipc-tests.Sample/1";

/// Parsed `--key value` arguments.
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, String>,
}

impl Args {
    /// Parses `--key value` pairs.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args> {
        let mut values = HashMap::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(key) = arg.strip_prefix("--") else {
                bail!("unexpected argument `{arg}`; expected --key value");
            };
            let value = args
                .next()
                .with_context(|| format!("--{key} needs a value"))?;
            values.insert(key.to_owned(), value);
        }
        Ok(Args { values })
    }

    /// The value of `--key` parsed as `T`, or `default`.
    pub fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(key) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|err| anyhow::anyhow!("--{key} {text}: {err}")),
        }
    }

    /// The value of `--key` as text, or `default`.
    pub fn text(&self, key: &str, default: &str) -> String {
        self.values
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }
}

/// Runs the role named by the first argument with the rest; returns the exit code.
pub fn run<I: IntoIterator<Item = String>>(args: I) -> i32 {
    let mut args = args.into_iter();
    let role = args.next().unwrap_or_default();
    let result = Args::parse(args).and_then(|args| match role.as_str() {
        "frame-source" => frame_source(&args, std::io::stdout().lock()),
        "frame-sink" => frame_sink(&args, std::io::stdin().lock()),
        "garbage-source" => garbage_source(&args, std::io::stdout().lock()),
        "bench" => bench(&args),
        other => shm::run(other, &args)
            .or_else(|| socket::run(other, &args))
            .or_else(|| web::run(other, &args))
            .or_else(|| queue::run(other, &args))
            .or_else(|| pipeline::run(other, &args))
            .or_else(|| amqp::run(other, &args))
            .unwrap_or_else(|| bail!("unknown role `{other}`")),
    });
    match result {
        Ok(()) => 0,
        Err(err) => {
            let kind = err
                .downcast_ref::<ipc_core::Error>()
                .map(|e| e.kind().as_str())
                .unwrap_or("error");
            // The outcome line goes to stdout for the parent; stderr gets the same for people.
            // Stdout may be a pipe whose reader is gone (a producer's): ignore that failure.
            let _ = writeln!(std::io::stdout(), "error {kind}: {err:#}");
            eprintln!("ipc-peer {role}: {kind}: {err:#}");
            1
        }
    }
}

/// `frame-source --count N --size BYTES [--type NAME]`: writes a hello, N `Sample` frames
/// and a close to `out`.
fn frame_source(args: &Args, out: impl Write) -> Result<()> {
    let count: u64 = args.get("count", 1000)?;
    let size: usize = args.get("size", 64)?;
    let type_name = args.text("type", SAMPLE_TYPE);
    let limits = Limits::default();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut buf = Vec::with_capacity(64 * 1024 + size);
    Hello::new(MessageType::named(type_name), &limits).encode_frame(&mut buf)?;
    let mut payload = vec![0u8; size];
    for seq in 0..count {
        fill_payload(seq, &mut payload);
        ipc_core::encode_frame(
            &mut buf,
            FrameKind::Data,
            0,
            &Sample {
                seq,
                payload: &payload,
            },
            &limits,
        )?;
        if buf.len() >= 64 * 1024 {
            out.write_all(&buf).context("write frames")?;
            buf.clear();
        }
    }
    Close::new(CloseCode::NORMAL, "").encode_frame(&mut buf)?;
    out.write_all(&buf).context("write frames")?;
    out.flush().context("flush frames")?;
    Ok(())
}

/// `garbage-source --bytes N --seed S`: writes N pseudo-random bytes, optionally after a valid
/// hello (`--after-hello 1`).
fn garbage_source(args: &Args, mut out: impl Write) -> Result<()> {
    let bytes: usize = args.get("bytes", 4096)?;
    let seed: u64 = args.get("seed", 1)?;
    let after_hello: u8 = args.get("after-hello", 0)?;
    let mut buf = Vec::new();
    if after_hello != 0 {
        Hello::new(MessageType::named(SAMPLE_TYPE), &Limits::default()).encode_frame(&mut buf)?;
    }
    let start = buf.len();
    buf.resize(start + bytes, 0);
    fill_payload(seed, &mut buf[start..]);
    out.write_all(&buf).context("write garbage")?;
    out.flush().context("flush garbage")?;
    Ok(())
}

/// `frame-sink [--progress N]`: reads a hello, `Sample` frames and a close from `input`,
/// verifying order and every payload byte; prints `ok count=.. bytes=.. checksum=0x..`.
fn frame_sink(args: &Args, mut input: impl Read) -> Result<()> {
    let progress: u64 = args.get("progress", 0)?;
    let max_frame_len: u32 = args.get("max-frame-len", ipc_core::DEFAULT_MAX_FRAME_LEN)?;
    let limits = Limits::new().with_max_frame_len(max_frame_len);
    let ours = Hello::new(MessageType::named(SAMPLE_TYPE), &limits);
    let mut decoder = FrameDecoder::new(limits);
    let mut checksum = Checksum::default();
    let mut expected = Vec::new();
    let mut count: u64 = 0;
    let mut bytes: u64 = 0;
    let mut greeted = false;
    let started = Instant::now();
    loop {
        let n = input
            .read(decoder.read_buf())
            .context("read frames from stdin")?;
        if n == 0 {
            decoder.finish()?;
            return Err(ipc_core::Error::new(
                ErrorKind::PeerDied,
                format!("stream ended without a close frame after {count} messages"),
            )
            .into());
        }
        decoder.commit(n);
        while let Some(frame) = decoder.next_frame()? {
            match (greeted, frame.kind()) {
                (false, FrameKind::Hello) => {
                    ours.agree(&Hello::decode(frame.payload())?)?;
                    greeted = true;
                }
                (false, kind) => bail!(ipc_core::Error::new(
                    ErrorKind::Protocol,
                    format!("expected a hello frame first, got {kind:?}")
                )),
                (true, FrameKind::Data) => {
                    let sample: Sample<'_> = frame.decode()?;
                    if sample.seq != count {
                        bail!(ipc_core::Error::new(
                            ErrorKind::Corrupted,
                            format!("message {count} carries sequence number {}", sample.seq)
                        ));
                    }
                    check_payload(count, &sample, &mut expected)?;
                    checksum.add(sample.seq, sample.payload);
                    count += 1;
                    bytes += sample.payload.len() as u64;
                    if progress != 0 && count.is_multiple_of(progress) {
                        println!("progress {count}");
                    }
                }
                (true, FrameKind::Close) => {
                    let close = Close::decode(frame.payload())?;
                    if close.code != CloseCode::NORMAL {
                        return Err(close.into_error().into());
                    }
                    println!(
                        "ok count={count} bytes={bytes} checksum={:#018x} micros={}",
                        checksum.value(),
                        started.elapsed().as_micros()
                    );
                    return Ok(());
                }
                (true, kind) => bail!(ipc_core::Error::new(
                    ErrorKind::Protocol,
                    format!("unexpected {kind:?} frame after the hello")
                )),
            }
        }
    }
}

/// `bench --effort quick|full [--only GROUP]`: runs every bench (or one group), printing
/// `figure {json}` per figure.
fn bench(args: &Args) -> Result<()> {
    let effort = match args.text("effort", "full").as_str() {
        "quick" => crate::bench::Effort::Quick,
        "full" => crate::bench::Effort::Full,
        other => bail!("--effort {other}: expected quick or full"),
    };
    let only = args.text("only", "");
    let only = (!only.is_empty()).then_some(only.as_str());
    let mut count = 0;
    crate::bench::run_all(effort, only, |figure| {
        count += 1;
        match serde_json::to_string(figure) {
            Ok(json) => println!("figure {json}"),
            Err(err) => eprintln!("cannot serialise figure: {err}"),
        }
    })?;
    println!("ok figures={count}");
    Ok(())
}

/// Checks that message number `count` carries the payload `fill_payload` made for its
/// sequence number; `scratch` is reused between calls.
pub(crate) fn check_payload(count: u64, sample: &Sample<'_>, scratch: &mut Vec<u8>) -> Result<()> {
    scratch.resize(sample.payload.len(), 0);
    fill_payload(sample.seq, scratch);
    if sample.payload != scratch.as_slice() {
        bail!(ipc_core::Error::new(
            ErrorKind::Corrupted,
            format!("payload of message {count} differs from what was sent")
        ));
    }
    Ok(())
}

/// The checksum a `frame-sink` reports for `count` messages of `size` bytes.
pub fn expected_checksum(count: u64, size: usize) -> Checksum {
    let mut checksum = Checksum::default();
    let mut payload = vec![0u8; size];
    for seq in 0..count {
        fill_payload(seq, &mut payload);
        checksum.add(seq, &payload);
    }
    checksum
}
