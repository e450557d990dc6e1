//! ipc-shm shared state between real processes: exact totals under the lock, and recovery
//! from a holder killed while holding it.

use std::time::Duration;

use anyhow::Result;
use ipc_shm::{ShmState, StateConfig};
use ipc_tests::{Peer, Watchdog, unique_name};

const WAIT: Duration = Duration::from_secs(120);

fn counters(name: &str, n: usize, count: u64) -> Result<Vec<Peer>> {
    let count = count.to_string();
    (0..n)
        .map(|i| {
            Peer::spawn_role(
                format!("counter-{i}"),
                "shm-counter",
                ["--name", name, "--count", &count],
            )
        })
        .collect()
}

#[test]
fn processes_incrementing_under_the_lock_reach_the_exact_total() -> Result<()> {
    let _watchdog = Watchdog::new("shared counter", WAIT);
    let name = unique_name("shm-counter");
    let mut state = ShmState::<u64>::create(&name, 0, &StateConfig::new())?;
    let mut peers = counters(&name, 4, 5_000)?;
    for peer in &mut peers {
        let outcome = peer.expect_prefixed("ok", WAIT)?;
        assert_eq!(outcome, "count=5000 recovered=0");
        peer.wait_success(WAIT)?;
    }
    assert_eq!(state.load(Duration::from_secs(1))?, 20_000);
    assert_eq!(state.recoveries(), 0);
    drop(state);
    assert!(!ipc_shm::segment_path(&name).exists());
    Ok(())
}

#[test]
fn a_holder_killed_with_the_lock_is_taken_over_and_the_total_stays_exact() -> Result<()> {
    let _watchdog = Watchdog::new("killed lock holder", WAIT);
    let name = unique_name("shm-holder");
    let mut state = ShmState::<u64>::create(&name, 0, &StateConfig::new())?;
    let mut holder = Peer::spawn_role("holder", "shm-hold-lock", ["--name", &name])?;
    assert_eq!(holder.expect_line(WAIT)?, "holding");
    // Held by a live process: a timed lock fails with a timeout naming it.
    let err = state.lock(Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.kind(), ipc_core::ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains(&holder.pid().to_string()), "{err}");

    let mut peers = counters(&name, 3, 2_000)?;
    holder.kill()?;
    let mut recovered = 0;
    for peer in &mut peers {
        let outcome = peer.expect_prefixed("ok", WAIT)?;
        let (count, took_over) = outcome
            .split_once(" recovered=")
            .ok_or_else(|| anyhow::anyhow!("bad outcome {outcome}"))?;
        assert_eq!(count, "count=2000");
        recovered += took_over.parse::<u64>()?;
        peer.wait_success(WAIT)?;
    }
    assert_eq!(
        recovered, 1,
        "exactly one process takes over the dead holder's lock"
    );
    assert_eq!(state.recoveries(), 1);
    assert_eq!(state.load(Duration::from_secs(1))?, 6_000);
    Ok(())
}
