//! Sending and receiving allocate nothing per message: a counting allocator watches this
//! thread while messages go through both paths (typed postcard and zero-copy bytes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ipc_shm::{ChannelConfig, ShmReceiver, ShmSender};
use serde::{Deserialize, Serialize};

thread_local! {
    // Const-initialised without a destructor: using it never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// thread-local `Cell` that needs no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Reading<'a> {
    sensor: &'a str,
    seq: u64,
    #[serde(borrow)]
    samples: &'a [u8],
}

#[test]
fn no_heap_allocation_per_message() {
    let name = format!("no-alloc-{}", std::process::id());
    let config = ChannelConfig::new().with_capacity(4096);
    let mut receiver = ShmReceiver::<Reading<'static>>::create(&name, &config).unwrap();
    let mut sender = ShmSender::<Reading<'static>>::open(&name, &config).unwrap();
    let samples = [9u8; 100];

    let before = allocations();
    let mut total = 0u64;
    for seq in 0..10_000u64 {
        // Typed: postcard straight into the ring, decoded in place with borrowed fields.
        sender
            .send_as(&Reading {
                sensor: "left",
                seq,
                samples: &samples,
            })
            .unwrap();
        let message = receiver.recv_ref().unwrap();
        let reading: Reading<'_> = message.decode().unwrap();
        assert_eq!(reading.seq, seq);
        total += reading.samples.len() as u64;
        drop(message);

        // Zero-copy bytes: reserve, write, commit; read where they lie.
        let mut slot = sender.reserve(64).unwrap();
        slot.fill(seq as u8);
        slot.commit();
        let message = receiver.recv_ref().unwrap();
        total += message.len() as u64;
    }
    let after = allocations();
    assert_eq!(total, 10_000 * (100 + 64));
    assert_eq!(
        after - before,
        0,
        "allocations while passing 20000 messages"
    );
}
