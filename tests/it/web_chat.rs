//! The web chat in a real browser (`ipc_tests::web_chat`): two headless Chromium pages, a
//! native process and the Python client in one room through one server over WebSocket and a
//! socket file. Without `/usr/bin/chromium` and `/usr/bin/chromedriver` it says it was
//! skipped and how to install them, unless `IPC_REQUIRE_BROWSER=1` (CI), where it fails.

use std::time::Duration;

use anyhow::Result;
use ipc_tests::Watchdog;
use ipc_tests::web_chat;

#[test]
fn browsers_and_native_clients_chat_through_one_server() -> Result<()> {
    if !web_chat::browser_present()? {
        println!(
            "skipped: {}",
            web_chat::browser_missing().unwrap_or_default()
        );
        return Ok(());
    }
    let _watchdog = Watchdog::new("web chat in chromium", Duration::from_secs(240));
    let outcome = web_chat::web_chat()?;
    println!(
        "{} processes, {} deliveries checked: {}",
        outcome.processes, outcome.messages, outcome.detail
    );
    Ok(())
}
