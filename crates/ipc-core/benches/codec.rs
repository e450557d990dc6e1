//! Encode + frame and parse + decode of a 64-byte and a 64 KiB message, beside a plain
//! memcpy of the same bytes. `cargo bench -p ipc-core`; `cargo xtask bench` reports the same
//! cases in its table.

use divan::{Bencher, black_box};
use ipc_core::{Frame, FrameKind, Limits};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Message<'a> {
    seq: u64,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

const SIZES: [usize; 2] = [64, 64 * 1024];

fn main() {
    divan::main();
}

fn frame_of(payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    let message = Message { seq: 7, payload };
    ipc_core::encode_frame(&mut wire, FrameKind::Data, 0, &message, &Limits::default())
        .expect("encode");
    wire
}

#[divan::bench(args = SIZES)]
fn encode_frame(bencher: Bencher<'_, '_>, size: usize) {
    let payload = vec![0xA5u8; size];
    let limits = Limits::default();
    let mut out = Vec::with_capacity(size + 64);
    bencher.bench_local(|| {
        out.clear();
        let message = Message {
            seq: 7,
            payload: black_box(&payload),
        };
        ipc_core::encode_frame(&mut out, FrameKind::Data, 0, &message, &limits).ok()
    });
}

#[divan::bench(args = SIZES)]
fn parse_and_decode(bencher: Bencher<'_, '_>, size: usize) {
    let wire = frame_of(&vec![0xA5u8; size]);
    let limits = Limits::default();
    bencher.bench_local(|| {
        let (frame, _) = Frame::parse(black_box(&wire), &limits).ok()?;
        frame.decode::<Message<'_>>().ok().map(|m| m.payload.len())
    });
}

#[divan::bench(args = SIZES)]
fn memcpy_baseline(bencher: Bencher<'_, '_>, size: usize) {
    let wire = frame_of(&vec![0xA5u8; size]);
    let mut copy = vec![0u8; wire.len()];
    bencher.bench_local(|| {
        copy.copy_from_slice(black_box(&wire));
        black_box(&copy);
    });
}
