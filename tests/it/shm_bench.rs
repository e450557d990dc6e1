//! The ipc-shm benchmarks run end to end in their quick form. Speed is not asserted: only
//! that every figure and its baseline were measured.

use std::time::Duration;

use anyhow::Result;
use ipc_tests::Watchdog;
use ipc_tests::bench::{Effort, shm};

#[test]
fn quick_bench_yields_finite_figures_with_baselines() -> Result<()> {
    let _watchdog = Watchdog::new("shm quick bench", Duration::from_secs(300));
    // `IPC_BENCH_FULL=1` (with `--release`) gives the README's numbers without the xtask.
    let effort = match std::env::var_os("IPC_BENCH_FULL") {
        Some(_) => Effort::Full,
        None => Effort::Quick,
    };
    let figures = shm::run(effort)?;
    // Two more with the iceoryx2 anchor rows.
    let expected = if cfg!(feature = "iceoryx2-anchor") {
        8
    } else {
        6
    };
    assert_eq!(figures.len(), expected);
    for figure in &figures {
        eprintln!(
            "{} {} B: {:.0} {} vs {} {:.0} ({:.2}x)",
            figure.case,
            figure.payload_bytes,
            figure.value,
            figure.unit,
            figure.baseline_name,
            figure.baseline_value,
            figure.ratio()
        );
        assert!(figure.value.is_finite() && figure.value > 0.0, "{figure:?}");
        assert!(
            figure.baseline_value.is_finite() && figure.baseline_value > 0.0,
            "{figure:?}"
        );
    }
    Ok(())
}
