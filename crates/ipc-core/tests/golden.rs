//! Golden vectors: sample messages and their exact bytes, checked into
//! `tests/golden/vectors.json` and shown in PROTOCOL.md. If a change to the encoding makes this
//! test fail, it breaks every peer already deployed: bump the protocol version instead.

use ipc_core::{Close, CloseCode, Frame, FrameDecoder, FrameKind, Hello, Limits, MessageType};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Chat<'a> {
    from: &'a str,
    text: &'a str,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Sample<'a> {
    seq: u64,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Event {
    Joined { user: String, room: u16 },
    Left(u32),
    Reading(Option<i32>, f32),
}

/// Each vector: its name and the frame bytes this build produces for it.
fn produce() -> Vec<(&'static str, Vec<u8>)> {
    let limits = Limits::default();
    let mut vectors = Vec::new();
    let mut frame = |name, f: &dyn Fn(&mut Vec<u8>)| {
        let mut out = Vec::new();
        f(&mut out);
        vectors.push((name, out));
    };
    frame("hello", &|out| {
        Hello::new(MessageType::named("chat.Message/1"), &limits)
            .encode_frame(out)
            .unwrap();
    });
    frame("data-u32", &|out| {
        ipc_core::encode_frame(out, FrameKind::Data, 0, &42u32, &limits).unwrap();
    });
    frame("data-chat", &|out| {
        let chat = Chat {
            from: "ann",
            text: "hi",
        };
        ipc_core::encode_frame(out, FrameKind::Data, 0, &chat, &limits).unwrap();
    });
    frame("data-sample", &|out| {
        let sample = Sample {
            seq: 300,
            payload: &[1, 2, 3],
        };
        ipc_core::encode_frame(out, FrameKind::Data, 0, &sample, &limits).unwrap();
    });
    frame("data-event-joined", &|out| {
        let event = Event::Joined {
            user: "bob".into(),
            room: 3,
        };
        ipc_core::encode_frame(out, FrameKind::Data, 0, &event, &limits).unwrap();
    });
    frame("data-event-reading", &|out| {
        let event = Event::Reading(Some(-2), 1.5);
        ipc_core::encode_frame(out, FrameKind::Data, 0, &event, &limits).unwrap();
    });
    frame("ping", &|out| {
        ipc_core::encode_raw_frame(out, FrameKind::Ping, 7, &[], &limits).unwrap();
    });
    frame("pong", &|out| {
        ipc_core::encode_raw_frame(out, FrameKind::Pong, 7, &[], &limits).unwrap();
    });
    frame("close", &|out| {
        Close::new(CloseCode::NORMAL, "bye")
            .encode_frame(out)
            .unwrap();
    });
    frame("request", &|out| {
        ipc_core::encode_frame(out, FrameKind::Request, 5, "hi", &limits).unwrap();
    });
    frame("response", &|out| {
        ipc_core::encode_frame(out, FrameKind::Response, 5, "hi!", &limits).unwrap();
    });
    frame("subscribe", &|out| {
        ipc_core::encode_raw_frame(out, FrameKind::Subscribe, 3, b"chat", &limits).unwrap();
    });
    frame("subscribe-ack", &|out| {
        ipc_core::encode_raw_frame(out, FrameKind::SubscribeAck, 3, &[], &limits).unwrap();
    });
    frame("unsubscribe", &|out| {
        ipc_core::encode_raw_frame(out, FrameKind::Unsubscribe, 0, b"chat", &limits).unwrap();
    });
    frame("publish", &|out| {
        // topic_len (u16 LE), topic, then the postcard message.
        let mut payload = vec![4, 0];
        payload.extend_from_slice(b"chat");
        ipc_core::encode_to_vec("hi", &mut payload, 1024).unwrap();
        ipc_core::encode_raw_frame(out, FrameKind::Publish, 0, &payload, &limits).unwrap();
    });
    frame("batch", &|out| {
        let mut batch = ipc_core::FrameBuffer::with_capacity(64);
        batch.push_batched(&42u32, &limits).unwrap();
        batch.push_batched(&300u32, &limits).unwrap();
        out.extend_from_slice(batch.as_slice());
    });
    vectors
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unhex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn golden() -> Vec<(String, Vec<u8>)> {
    let text = include_str!("golden/vectors.json");
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    json["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                unhex(v["hex"].as_str().unwrap()),
            )
        })
        .collect()
}

#[test]
fn this_build_encodes_every_vector_byte_for_byte() {
    let golden = golden();
    let produced = produce();
    assert_eq!(golden.len(), produced.len(), "vector count");
    for ((name, want), (produced_name, have)) in golden.iter().zip(&produced) {
        assert_eq!(name, produced_name);
        assert_eq!(hex(have), hex(want), "vector `{name}`");
    }
}

#[test]
fn every_vector_decodes_to_its_value() {
    let limits = Limits::default();
    let golden = golden();
    let find = |name: &str| {
        golden
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, bytes)| bytes.as_slice())
            .unwrap()
    };
    let parse = |name: &str| {
        let (frame, used) = Frame::parse(find(name), &limits).unwrap();
        assert_eq!(
            used,
            find(name).len(),
            "vector `{name}` is exactly one frame"
        );
        frame
    };

    let hello = Hello::decode(parse("hello").payload()).unwrap();
    assert_eq!(hello.message_type().name(), "chat.Message/1");
    assert_eq!(hello.message_type().fingerprint(), 0xd90e_ede0_6cf7_fb36);
    assert_eq!(hello.max_frame_len(), 16 * 1024 * 1024);

    assert_eq!(parse("data-u32").decode::<u32>().unwrap(), 42);
    assert_eq!(
        parse("data-chat").decode::<Chat<'_>>().unwrap(),
        Chat {
            from: "ann",
            text: "hi"
        }
    );
    assert_eq!(
        parse("data-sample").decode::<Sample<'_>>().unwrap(),
        Sample {
            seq: 300,
            payload: &[1, 2, 3]
        }
    );
    assert_eq!(
        parse("data-event-joined").decode::<Event>().unwrap(),
        Event::Joined {
            user: "bob".into(),
            room: 3
        }
    );
    assert_eq!(
        parse("data-event-reading").decode::<Event>().unwrap(),
        Event::Reading(Some(-2), 1.5)
    );
    assert_eq!(parse("ping").kind(), FrameKind::Ping);
    assert_eq!(parse("ping").id(), 7);
    assert_eq!(parse("pong").kind(), FrameKind::Pong);
    assert_eq!(
        Close::decode(parse("close").payload()).unwrap(),
        Close::new(CloseCode::NORMAL, "bye")
    );
    let request = parse("request");
    assert_eq!((request.kind(), request.id()), (FrameKind::Request, 5));
    assert_eq!(request.decode::<&str>().unwrap(), "hi");
    let response = parse("response");
    assert_eq!((response.kind(), response.id()), (FrameKind::Response, 5));
    assert_eq!(response.decode::<&str>().unwrap(), "hi!");
    assert_eq!(parse("subscribe").payload(), b"chat");
    assert_eq!(parse("subscribe-ack").kind(), FrameKind::SubscribeAck);
    assert_eq!(parse("unsubscribe").payload(), b"chat");
    let publish = parse("publish");
    assert_eq!(publish.kind(), FrameKind::Publish);
    assert_eq!(&publish.payload()[..6], b"\x04\x00chat");
    assert_eq!(
        ipc_core::decode::<&str>(&publish.payload()[6..]).unwrap(),
        "hi"
    );

    let batch = parse("batch");
    assert_eq!(batch.kind(), FrameKind::Batch);
    let mut decoder = FrameDecoder::new(limits);
    decoder.push(find("batch"));
    let mut batched = Vec::new();
    while let Some(frame) = decoder.next_frame().unwrap() {
        assert_eq!((frame.kind(), frame.id()), (FrameKind::Data, 0));
        batched.push(frame.decode::<u32>().unwrap());
    }
    assert_eq!(batched, [42, 300]);

    // All vectors back to back form a valid stream (the batch gives two data frames).
    let mut decoder = FrameDecoder::new(limits);
    for (_, bytes) in &golden {
        decoder.push(bytes);
    }
    let mut n = 0;
    while decoder.next_frame().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, golden.len() + 1);
}

#[test]
fn protocol_md_shows_every_vector() {
    let protocol = include_str!("../PROTOCOL.md");
    // PROTOCOL.md wraps long hex dumps; compare with whitespace folded.
    let folded: String = protocol.split_whitespace().collect::<Vec<_>>().join(" ");
    for (name, bytes) in golden() {
        assert!(
            folded.contains(&hex(&bytes)),
            "PROTOCOL.md does not show the bytes of vector `{name}`: {}",
            hex(&bytes)
        );
    }
}

/// Prints the vectors this build produces, for updating vectors.json deliberately:
/// `cargo test -p ipc-core --test golden print_vectors -- --nocapture`.
#[test]
fn print_vectors() {
    for (name, bytes) in produce() {
        println!("{name}: {}", hex(&bytes));
    }
}
