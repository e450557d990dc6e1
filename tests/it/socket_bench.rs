//! The socket benches run (quick effort) and produce finite figures beside their baselines.
//! Speed is not asserted here; `cargo xtask bench` reports it.

use std::time::Duration;

use anyhow::Result;
use ipc_tests::Watchdog;
use ipc_tests::bench::{Effort, socket};

#[test]
fn socket_benches_produce_every_figure() -> Result<()> {
    let _watchdog = Watchdog::new("socket benches", Duration::from_secs(300));
    let figures = socket::run(Effort::Quick)?;
    // Two transports, each: 2 round trips + 3 sizes x (blocking + async) streams; then
    // WebSocket: a round trip and 2 stream sizes; then tls: 2 round trips (beside raw
    // rustls, beside tcp) + 2 sizes x 2 streams.
    assert_eq!(figures.len(), 16 + 3 + 6, "{figures:#?}");
    for figure in &figures {
        assert!(figure.value.is_finite() && figure.value > 0.0, "{figure:?}");
        assert!(
            figure.baseline_value.is_finite() && figure.baseline_value > 0.0,
            "{figure:?}"
        );
        println!(
            "{:<40} {:>6} B {:>14.1} {:<6} vs {:>14.1} ({}) ratio {:.2}",
            figure.case,
            figure.payload_bytes,
            figure.value,
            figure.unit,
            figure.baseline_value,
            figure.baseline_name,
            figure.ratio()
        );
    }
    Ok(())
}
