//! Hostile input never makes the decoder allocate past the limit.
//!
//! This test binary runs under a capped global allocator: around each decode the cap is set
//! to what is allocated now plus a budget, and an allocation beyond it aborts the test
//! process. The budget is proportional to the bytes actually received, never to a length
//! the input merely claims.

use std::alloc::System;

use cap::Cap;
use ipc_core::{FrameDecoder, FrameHeader, FrameKind, Limits};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde::Deserialize;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

#[derive(Deserialize, Debug)]
#[allow(dead_code)] // only decoded, never read
struct Owned {
    names: Vec<String>,
    data: Vec<Vec<u8>>,
    nested: Option<Box<Owned>>,
}

/// Runs `f` with at most `budget` bytes of new allocation allowed.
fn with_budget<R>(budget: usize, f: impl FnOnce() -> R) -> R {
    ALLOCATOR
        .set_limit(ALLOCATOR.allocated() + budget)
        .expect("set allocation limit");
    let result = f();
    ALLOCATOR
        .set_limit(usize::MAX)
        .expect("lift allocation limit");
    result
}

fn budget_for(input_len: usize) -> usize {
    // The decoder's buffer grows by doubling from a 16 KiB read chunk; decoding owned values
    // allocates at most about as much as the input it reads (serde caps preallocation).
    4 * input_len + 256 * 1024
}

fn decode_all(limits: Limits, input: &[u8], chunk: usize) {
    let mut decoder = FrameDecoder::new(limits);
    for piece in input.chunks(chunk.max(1)) {
        let room = decoder.read_buf();
        let n = room.len().min(piece.len());
        room[..n].copy_from_slice(&piece[..n]);
        decoder.commit(n);
        decoder.push(&piece[n..]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let _ = frame.decode::<Owned>();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
}

// The allocation cap is process-wide, so everything runs in one test, one thing at a time:
// a parallel test allocating inside another's budget window would trip it.
#[test]
fn hostile_input_stays_within_its_allocation_budget() {
    a_header_claiming_the_maximum_costs_only_what_arrives();
    length_prefixes_inside_a_payload_cost_only_what_arrives();
    arbitrary_streams_stay_within_budget();
}

fn a_header_claiming_the_maximum_costs_only_what_arrives() {
    let limits = Limits::default(); // 16 MiB
    let mut input = FrameHeader::new(FrameKind::Data, 0, limits.max_frame_len())
        .to_bytes()
        .to_vec();
    input.extend_from_slice(&[0u8; 1000]);
    with_budget(budget_for(input.len()), || decode_all(limits, &input, 100));
}

fn length_prefixes_inside_a_payload_cost_only_what_arrives() {
    // A payload whose postcard sequence length claims 2^62 elements.
    let limits = Limits::default();
    let payload = [
        0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0x01, 0x02,
    ];
    let mut input = Vec::new();
    ipc_core::encode_raw_frame(&mut input, FrameKind::Data, 0, &payload, &limits).unwrap();
    with_budget(budget_for(input.len()), || decode_all(limits, &input, 7));
}

fn arbitrary_streams_stay_within_budget() {
    let frames = prop::collection::vec(
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..400)),
        0..8,
    );
    let garbage = prop::collection::vec(any::<u8>(), 0..64);
    let mut runner = TestRunner::new(ProptestConfig::with_cases(256));
    runner
        .run(
            &(frames, garbage, 1usize..5000),
            |(frames, garbage, chunk)| {
                let limits = Limits::default();
                let mut input = Vec::new();
                for (claimed, payload) in &frames {
                    // A header that may claim far more than the payload that follows.
                    let claimed = claimed % (limits.max_frame_len() + 1);
                    input.extend_from_slice(
                        &FrameHeader::new(FrameKind::Data, 0, claimed).to_bytes(),
                    );
                    input.extend_from_slice(payload);
                }
                input.extend_from_slice(&garbage);
                with_budget(budget_for(input.len()), || {
                    decode_all(limits, &input, chunk)
                });
                Ok(())
            },
        )
        .unwrap();
}
