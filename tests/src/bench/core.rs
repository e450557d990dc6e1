//! ipc-core's codec: encode + frame and parse + decode, beside a plain memcpy of the same
//! bytes. Run inside the (release) peer process, never in a debug build.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use ipc_core::{Frame, FrameKind, Limits};

use super::{Effort, Figure};
use crate::fill_payload;
use crate::roles::Sample;

/// Nanoseconds per call of `f`: the median of `samples` timed batches of `batch` calls.
pub fn ns_per_op(samples: usize, batch: u64, mut f: impl FnMut()) -> f64 {
    let mut results = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        for _ in 0..batch {
            f();
        }
        results.push(started.elapsed().as_nanos() as f64 / batch as f64);
    }
    results.sort_by(f64::total_cmp);
    results[results.len() / 2]
}

/// Measures the codec for 64-byte and 64 KiB payloads.
pub fn run(effort: Effort) -> Result<Vec<Figure>> {
    let limits = Limits::default();
    let mut figures = Vec::new();
    for size in [64usize, 64 * 1024] {
        let (samples, batch) = match (effort, size) {
            (Effort::Quick, _) => (5, 200),
            (Effort::Full, 64) => (31, 200_000),
            (Effort::Full, _) => (31, 2_000),
        };
        let mut payload = vec![0u8; size];
        fill_payload(1, &mut payload);
        let message = Sample {
            seq: 1,
            payload: &payload,
        };
        let mut wire = Vec::with_capacity(size + 64);
        ipc_core::encode_frame(&mut wire, FrameKind::Data, 0, &message, &limits)?;
        let frame_len = wire.len();

        let mut out = Vec::with_capacity(frame_len);
        let encode = ns_per_op(samples, batch, || {
            out.clear();
            let n =
                ipc_core::encode_frame(&mut out, FrameKind::Data, 0, black_box(&message), &limits);
            black_box(n.ok());
        });
        let mut copy = vec![0u8; frame_len];
        let memcpy = ns_per_op(samples, batch, || {
            copy.copy_from_slice(black_box(&wire));
            black_box(&copy);
        });
        let decode = ns_per_op(samples, batch, || {
            let parsed = Frame::parse(black_box(&wire), &limits)
                .and_then(|(frame, _)| frame.decode::<Sample<'_>>());
            black_box(parsed.ok());
        });
        for (case, value) in [
            ("encode + frame", encode),
            ("parse + decode (borrowed)", decode),
        ] {
            figures.push(Figure {
                mechanism: "ipc-core".into(),
                case: case.into(),
                payload_bytes: size as u64,
                metric: "latency".into(),
                value,
                unit: "ns".into(),
                baseline_name: format!("memcpy of the {frame_len}-byte frame"),
                baseline_value: memcpy,
            });
        }
    }
    Ok(figures)
}
