//! Property tests: round trips of arbitrary values, arbitrary and truncated input, and streams
//! split at every point.

use std::collections::BTreeMap;

use ipc_core::{Close, ErrorKind, Frame, FrameDecoder, FrameKind, Hello, Limits, MessageType};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Shape {
    Unit,
    Circle { r: f64 },
    Poly(Vec<(i32, i32)>),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Everything {
    a: u8,
    b: i16,
    c: u32,
    d: i64,
    e: u128,
    flag: bool,
    text: String,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
    seq: Vec<u8>,
    maybe: Option<String>,
    shape: Shape,
    map: BTreeMap<String, u64>,
    ch: char,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Unit),
        any::<f64>()
            .prop_filter("NaN never equals itself", |r| !r.is_nan())
            .prop_map(|r| Shape::Circle { r }),
        prop::collection::vec(any::<(i32, i32)>(), 0..8).prop_map(Shape::Poly),
    ]
}

prop_compose! {
    fn everything()(
        a in any::<u8>(), b in any::<i16>(), c in any::<u32>(), d in any::<i64>(),
        e in any::<u128>(), flag in any::<bool>(), text in ".{0,40}",
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        seq in prop::collection::vec(any::<u8>(), 0..50),
        maybe in prop::option::of(".{0,10}"), shape in shape(),
        map in prop::collection::btree_map(".{0,5}", any::<u64>(), 0..5),
        ch in any::<char>(),
    ) -> Everything {
        Everything { a, b, c, d, e, flag, text, bytes, seq, maybe, shape, map, ch }
    }
}

/// `wire` split at the `cuts` (any points, in any order), in order.
fn pieces<'a>(wire: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
    points.push(0);
    points.push(wire.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|pair| &wire[pair[0]..pair[1]])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A `FrameBuffer` of batched messages (interleaved with plain frames, pings and
    /// messages too large for a batch), split anywhere, decodes to the same messages in
    /// order, each as a data frame.
    #[test]
    fn batched_messages_split_anywhere_decode_in_order(
        values in prop::collection::vec(everything(), 1..12),
        big in prop::collection::vec(any::<bool>(), 12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        capacity in 0usize..2000,
    ) {
        let limits = Limits::default();
        let mut out = ipc_core::FrameBuffer::with_capacity(capacity);
        let mut expected = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let mut value = value.clone();
            if big[i] {
                value.bytes = vec![i as u8; ipc_core::wire::MAX_BATCHED_MESSAGE + 1];
            }
            match i % 5 {
                3 => {
                    out.push(FrameKind::Data, 0, &value, &limits).unwrap();
                }
                4 => {
                    out.push_raw(FrameKind::Ping, i as u32, &[], &limits).unwrap();
                    out.push_batched(&value, &limits).unwrap();
                }
                _ => {
                    out.push_batched(&value, &limits).unwrap();
                }
            }
            expected.push(value);
        }
        let wire = out.as_slice().to_vec();
        let mut decoder = FrameDecoder::new(limits);
        let mut decoded = Vec::new();
        for piece in pieces(&wire, &cuts) {
            decoder.push(piece);
            while let Some(header) = decoder.peek_header().unwrap() {
                let frame = decoder.next_frame().unwrap().unwrap();
                prop_assert_eq!(frame.kind(), header.kind());
                prop_assert_eq!(frame.payload().len(), header.len() as usize);
                if frame.kind() == FrameKind::Data {
                    decoded.push(frame.decode::<Everything>().unwrap());
                }
            }
        }
        decoder.finish().unwrap();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn arbitrary_values_round_trip_through_frames(value in everything(), id in any::<u32>()) {
        let limits = Limits::default();
        let mut wire = Vec::new();
        let n = ipc_core::encode_frame(&mut wire, FrameKind::Data, id, &value, &limits).unwrap();
        prop_assert_eq!(n, wire.len());
        let (frame, used) = Frame::parse(&wire, &limits).unwrap();
        prop_assert_eq!(used, n);
        prop_assert_eq!(frame.id(), id);
        prop_assert_eq!(frame.decode::<Everything>().unwrap(), value.clone());

        // The same bytes through a caller's slice.
        let mut buf = vec![0u8; n];
        prop_assert_eq!(
            ipc_core::encode_frame_into(&mut buf, FrameKind::Data, id, &value, &limits).unwrap(),
            n
        );
        prop_assert_eq!(&buf, &wire);
        prop_assert_eq!(ipc_core::encoded_len(&value).unwrap() + ipc_core::HEADER_LEN, n);
    }

    #[test]
    fn a_stream_split_anywhere_decodes_the_same(
        values in prop::collection::vec(everything(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let limits = Limits::default();
        let mut wire = Vec::new();
        for (i, value) in values.iter().enumerate() {
            ipc_core::encode_frame(&mut wire, FrameKind::Data, i as u32, value, &limits).unwrap();
        }
        let mut decoder = FrameDecoder::new(limits);
        let mut decoded = Vec::new();
        for piece in pieces(&wire, &cuts) {
            decoder.push(piece);
            while let Some(frame) = decoder.next_frame().unwrap() {
                decoded.push((frame.id(), frame.decode::<Everything>().unwrap()));
            }
        }
        decoder.finish().unwrap();
        let expected: Vec<(u32, Everything)> =
            values.into_iter().enumerate().map(|(i, v)| (i as u32, v)).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let limits = Limits::new().with_max_frame_len(1024);
        let _ = Frame::parse(&bytes, &limits);
        let _ = Hello::decode(&bytes);
        let _ = Close::decode(&bytes);
        let _ = ipc_core::decode::<Everything>(&bytes);
        let _ = ipc_core::decode::<Vec<String>>(&bytes);
        let mut decoder = FrameDecoder::new(limits);
        decoder.push(&bytes);
        while let Ok(Some(frame)) = decoder.next_frame() {
            let _ = frame.decode::<Everything>();
        }
        let _ = decoder.finish();
    }

    #[test]
    fn arbitrary_payloads_behind_a_valid_header_never_panic(
        kind in prop::sample::select(vec![
            FrameKind::Hello, FrameKind::Data, FrameKind::Close, FrameKind::Batch,
        ]),
        payload in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let limits = Limits::default();
        let mut wire = Vec::new();
        ipc_core::encode_raw_frame(&mut wire, kind, 0, &payload, &limits).unwrap();
        let (frame, _) = Frame::parse(&wire, &limits).unwrap();
        match frame.kind() {
            FrameKind::Hello => { let _ = Hello::decode(frame.payload()); }
            FrameKind::Close => { let _ = Close::decode(frame.payload()); }
            _ => { let _ = frame.decode::<Everything>(); }
        }
        // Through a decoder, a batch of garbage either yields data frames that tile its
        // payload exactly or fails with a protocol error, and never reads past it.
        let mut decoder = FrameDecoder::new(limits);
        decoder.push(&wire);
        let mut taken = 0;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    taken += frame.payload().len() + if kind == FrameKind::Batch { 2 } else { 0 };
                    let _ = frame.decode::<Everything>();
                }
                Ok(None) => {
                    prop_assert_eq!(taken, payload.len());
                    break;
                }
                Err(err) => {
                    prop_assert_eq!(err.kind(), ErrorKind::Protocol);
                    prop_assert_eq!(kind, FrameKind::Batch);
                    break;
                }
            }
        }
    }

    #[test]
    fn every_truncation_of_a_stream_is_reported(value in everything()) {
        let limits = Limits::default();
        let mut wire = Vec::new();
        let hello_len = Hello::new(MessageType::of::<Everything>(), &limits)
            .encode_frame(&mut wire)
            .unwrap();
        ipc_core::encode_frame(&mut wire, FrameKind::Data, 0, &value, &limits).unwrap();
        for cut in 0..wire.len() {
            // Parsing the second frame cut short is `Truncated`.
            if cut > hello_len {
                let err = Frame::parse(&wire[hello_len..cut], &limits).unwrap_err();
                prop_assert_eq!(err.kind(), ErrorKind::Truncated);
            }
            // A stream ending there is complete only at a frame boundary.
            let mut decoder = FrameDecoder::new(limits);
            decoder.push(&wire[..cut]);
            let mut frames = 0;
            while decoder.next_frame().unwrap().is_some() {
                frames += 1;
            }
            prop_assert_eq!(frames, usize::from(cut >= hello_len));
            let finish = decoder.finish();
            if cut == 0 || cut == hello_len {
                prop_assert!(finish.is_ok());
            } else {
                prop_assert_eq!(finish.unwrap_err().kind(), ErrorKind::Truncated);
            }
        }
    }
}
