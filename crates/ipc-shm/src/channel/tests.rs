use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipc_core::ErrorKind;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::layout::{
    END_CLOSED, END_STATE, MAX_CAPACITY, S_SENDER, SLOT_LEN, SLOTS, TAG_MESSAGE, header_word,
    slot_base,
};
use super::{ChannelConfig, RecvGuard, ShmReceiver, ShmSender};

fn name(tag: &str) -> String {
    format!("unit-ch-{tag}-{}", std::process::id())
}

fn pair<T: Serialize + DeserializeOwned>(
    tag: &str,
    capacity: usize,
) -> (ShmSender<T>, ShmReceiver<T>) {
    let config = ChannelConfig::new().with_capacity(capacity);
    let receiver = ShmReceiver::create(&name(tag), &config).unwrap();
    let sender = ShmSender::open(&name(tag), &config).unwrap();
    (sender, receiver)
}

#[test]
fn messages_of_every_size_wrap_around_in_order() {
    let (mut sender, mut receiver) = pair::<Vec<u8>>("wrap", 256);
    let mut expected = std::collections::VecDeque::new();
    for (seq, round) in (0..2_000usize).enumerate() {
        let len = (round * 7) % 200;
        let message: Vec<u8> = (0..len).map(|i| (i + seq) as u8).collect();
        match sender.try_send(&message) {
            Ok(()) => expected.push_back(message),
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Full, "{err}");
                while let Some(got) = receiver.try_recv().unwrap() {
                    assert_eq!(got, expected.pop_front().unwrap());
                }
                sender.try_send(&message).unwrap();
                expected.push_back(message);
            }
        }
    }
    while let Some(got) = receiver.try_recv().unwrap() {
        assert_eq!(got, expected.pop_front().unwrap());
    }
    assert!(expected.is_empty());
}

#[test]
fn too_large_full_and_empty_are_distinct_errors() {
    let (mut sender, mut receiver) = pair::<Vec<u8>>("limits", 128);
    let err = sender.try_send(&vec![1u8; 121]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert_eq!(
        err.to_string(),
        "ring of 128 bytes cannot hold a message of 122 (at most 120)"
    );
    // 119 bytes of payload + 1 length byte = the largest message.
    sender.try_send(&vec![2u8; 119]).unwrap();
    let err = sender.try_send(&vec![]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Full, "{err}");
    let err = sender
        .send_timeout(&vec![], Duration::from_millis(30))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(receiver.recv().unwrap(), vec![2u8; 119]);
    assert!(receiver.try_recv().unwrap().is_none());
    // A timeout under one second waits (raw_sync's bug made such waits fail at once).
    let started = Instant::now();
    let err = receiver
        .recv_timeout(Duration::from_millis(150))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[test]
fn zero_copy_slots_and_borrowed_decoding() {
    let (mut sender, mut receiver) = pair::<String>("slots", 1024);
    let mut slot = sender.reserve(10).unwrap();
    slot[..3].copy_from_slice(&[2, b'h', b'i']);
    slot.commit_len(3);
    let _abandoned = sender.try_reserve(100).unwrap(); // publishes nothing
    sender.send(&"second".to_owned()).unwrap();
    {
        let message = receiver.recv_ref().unwrap();
        let text: &str = message.decode().unwrap();
        assert_eq!(text, "hi");
        let range = receiver_range(&message);
        assert!(range.contains(&(text.as_ptr() as usize)));
    }
    assert_eq!(receiver.recv().unwrap(), "second");
    // A record that does not decode is skipped with an error; the channel goes on.
    let mut slot = sender.reserve(1).unwrap();
    slot[0] = 0xff;
    slot.commit();
    sender.send(&"third".to_owned()).unwrap();
    let err = receiver.recv().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert_eq!(receiver.recv().unwrap(), "third");
}

fn receiver_range<T>(guard: &RecvGuard<'_, T>) -> std::ops::Range<usize> {
    let start = guard.as_ptr() as usize;
    start..start + guard.len()
}

struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses to be encoded"))
    }
}

#[test]
fn a_value_that_fails_to_encode_is_an_encode_error_and_sends_nothing() {
    let (mut sender, mut receiver) = pair::<u32>("encode", 256);
    let err = sender.send_as(&Unencodable).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(receiver.try_recv().unwrap().is_none());
    sender.send(&3).unwrap();
    assert_eq!(receiver.recv().unwrap(), 3);
}

#[test]
fn bytes_of_an_earlier_lap_never_pass_for_a_record() {
    let (mut sender, mut receiver) = pair::<Vec<u8>>("stale", 256);
    // Lap 1: a payload that carries, at ring offset 56, a perfect header (length 1, a
    // message, stamped for position 256 + 56) for the position the next lap will reach.
    // The payload starts at ring offset 10 (8-byte header, 2-byte length prefix).
    let mut payload = vec![0u8; 200];
    let at = 56 - 10;
    let forged = header_word(256 + 56, 1, TAG_MESSAGE, true);
    payload[at..at + 8].copy_from_slice(&forged.to_le_bytes());
    sender.send(&payload).unwrap();
    assert_eq!(receiver.recv().unwrap(), payload);
    // Lap 2: padding from 216 to the end, then a record at offset 0 that ends at 56.
    sender.send(&vec![5u8; 40]).unwrap();
    assert_eq!(receiver.recv().unwrap(), vec![5u8; 40]);
    // Offset 56 holds the old bytes, but nothing is published there.
    assert!(receiver.try_recv().unwrap().is_none());
}

#[test]
fn a_sender_that_died_mid_record_is_continued_over_its_unpublished_bytes() {
    let config = ChannelConfig::new().with_capacity(256);
    let name = name("midrecord");
    let mut receiver = ShmReceiver::<u32>::create(&name, &config).unwrap();
    let mut first = ShmSender::<u32>::open(&name, &config).unwrap();
    first.send(&1).unwrap();
    // As if it died while writing its next record: bytes in the ring, not published.
    first.reserve(4).unwrap().copy_from_slice(&[0xff; 4]);
    first
        .channel
        .word(slot_base(0) + S_SENDER + END_STATE)
        .store(END_CLOSED, Ordering::Release);
    std::mem::forget(first);
    let mut second = ShmSender::<u32>::open(&name, &config).unwrap();
    second.send(&3).unwrap();
    assert_eq!(receiver.recv().unwrap(), 1);
    assert_eq!(receiver.recv().unwrap(), 3);
    assert!(receiver.try_recv().unwrap().is_none());
}

#[test]
fn closing_either_end_is_peer_closed() {
    let (mut sender, mut receiver) = pair::<u32>("close", 256);
    sender.send(&7).unwrap();
    drop(sender);
    assert_eq!(receiver.recv().unwrap(), 7);
    let err = receiver.recv().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");

    let (mut sender, receiver) = pair::<u32>("close2", 256);
    drop(receiver);
    let err = sender.send(&1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
}

#[test]
fn a_second_live_sender_is_refused_and_bad_configs_are_invalid() {
    let (mut sender, mut receiver) = pair::<u32>("second", 256);
    let err = ShmSender::<u32>::open(&name("second"), &ChannelConfig::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let err = ShmSender::<String>::open(&name("second"), &ChannelConfig::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TypeMismatch, "{err}");
    // The refused openers must not close the ends they failed to take.
    let err = receiver
        .recv_timeout(Duration::from_millis(30))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let err = ShmReceiver::<u32>::open(&name("second"), &ChannelConfig::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    sender.send(&9).unwrap();
    assert_eq!(receiver.recv().unwrap(), 9);
    drop(sender);
    let err = receiver.recv().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
    for capacity in [0, 100, 32, MAX_CAPACITY * 2] {
        let config = ChannelConfig::new().with_capacity(capacity);
        let err = ShmSender::<u32>::create(&name("cap"), &config).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{capacity}: {err}");
    }
}

#[test]
fn scribbled_ring_yields_errors_not_panics() {
    let (mut sender, mut receiver) = pair::<Vec<u8>>("scribble", 512);
    let path = crate::segment::memory_path(&name("scribble")).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut errors = 0;
    for round in 0..20_000u64 {
        let _ = sender.try_send(&vec![round as u8; (round % 60) as usize]);
        // Scribble a few bytes anywhere in the segment (header, indices, ring).
        let offset = next() % (SLOTS as u64 + SLOT_LEN as u64 + 512);
        let bytes = next().to_le_bytes();
        // The sealed memory cannot grow: keep the write inside it.
        let n = ((next() % 8) as usize).min(len.saturating_sub(offset) as usize);
        std::os::unix::fs::FileExt::write_at(&file, &bytes[..n], offset).unwrap();
        match receiver.try_recv() {
            Ok(_) => {}
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 0);
}

#[test]
fn senders_get_their_own_rings_and_free_slots_are_reused() {
    let name = format!("unit-mpsc-{}", std::process::id());
    let config = ChannelConfig::new().with_capacity(256).with_max_senders(2);
    let mut receiver = ShmReceiver::<u32>::create(&name, &config).unwrap();
    assert_eq!(receiver.max_senders(), 2);
    let mut a = ShmSender::<u32>::open(&name, &config).unwrap();
    let mut b = ShmSender::<u32>::open(&name, &config).unwrap();
    let err = ShmSender::<u32>::open(&name, &config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    for i in 0..10 {
        a.send(&i).unwrap();
        b.send(&(100 + i)).unwrap();
    }
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    while let Some(value) = receiver.try_recv().unwrap() {
        if value < 100 {
            from_a.push(value);
        } else {
            from_b.push(value - 100);
        }
    }
    assert_eq!(from_a, (0..10).collect::<Vec<_>>());
    assert_eq!(from_b, (0..10).collect::<Vec<_>>());
    // One sender closing does not end the channel while the other is attached.
    drop(a);
    b.send(&7).unwrap();
    assert_eq!(receiver.recv().unwrap(), 7);
    // Its slot is free again.
    let mut c = ShmSender::<u32>::open(&name, &config).unwrap();
    c.send(&8).unwrap();
    assert_eq!(receiver.recv().unwrap(), 8);
    drop(b);
    drop(c);
    let err = receiver.recv().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
}

#[test]
fn blocking_ends_announce_how_they_sleep_and_polling_ends_that_they_never_do() {
    use super::layout::{END_SLEEPS, RX_LINE, SLEEPS_FENCED, SLEEPS_MEMBARRIER, SLEEPS_NEVER};
    let blocking = ChannelConfig::new().with_capacity(256);
    let polling = blocking.clone().with_wait_mode(crate::WaitMode::Polling);
    let at_once = blocking
        .clone()
        .with_spin_iterations(0)
        .with_yield_duration(Duration::ZERO);
    let receiver = ShmReceiver::<u64>::create(&name("sleeps"), &blocking).unwrap();
    let sender = ShmSender::<u64>::open(&name("sleeps"), &polling).unwrap();
    let map = receiver.channel.map();
    let expected = if crate::sys::membarrier_registered() {
        SLEEPS_MEMBARRIER
    } else {
        SLEEPS_FENCED
    };
    assert_eq!(
        map.u32_at(RX_LINE + END_SLEEPS).load(Ordering::Relaxed),
        expected
    );
    assert_eq!(
        map.u32_at(slot_base(0) + S_SENDER + END_SLEEPS)
            .load(Ordering::Relaxed),
        SLEEPS_NEVER
    );
    drop(sender);
    let sender = ShmSender::<u64>::open(&name("sleeps"), &at_once).unwrap();
    assert_eq!(
        map.u32_at(slot_base(0) + S_SENDER + END_SLEEPS)
            .load(Ordering::Relaxed),
        SLEEPS_FENCED
    );
    drop(sender);
}

/// Both ends sleep on the futex on almost every message (a few spins, no yield), so most
/// messages need a wake-up; the ends wake each other without fences of their own where the
/// sleeper's membarrier stands in for them. A lost wake-up would cost a 20 ms slice, not
/// the round trip: this runs 2000 of them, and the same with ends that sleep at once
/// (fences on both sides).
#[test]
fn ends_that_sleep_at_once_wake_each_other_for_every_message() {
    let spinning = ChannelConfig::new()
        .with_capacity(4096)
        .with_spin_iterations(1)
        .with_yield_duration(Duration::ZERO);
    ping_pong_2000("sleep-mb", &spinning);
    let at_once = spinning.with_spin_iterations(0);
    ping_pong_2000("sleep-f", &at_once);
}

fn ping_pong_2000(tag: &str, config: &ChannelConfig) {
    let config = config.clone();
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let mut ping_rx = ShmReceiver::<u64>::create(&name(&b), &config).unwrap();
    let mut pong_rx = ShmReceiver::<u64>::create(&name(&a), &config).unwrap();
    let mut ping_tx = ShmSender::<u64>::open(&name(&a), &config).unwrap();
    let mut pong_tx = ShmSender::<u64>::open(&name(&b), &config).unwrap();
    let echo = std::thread::spawn(move || {
        for _ in 0..2000 {
            let value = pong_rx.recv().unwrap();
            pong_tx.send(&value).unwrap();
        }
    });
    for round in 0..2000u64 {
        ping_tx.send(&round).unwrap();
        assert_eq!(ping_rx.recv().unwrap(), round);
    }
    echo.join().unwrap();
}
