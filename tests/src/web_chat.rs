//! The web chat in a real browser, for the `web_chat` test and the `web-chat` scenario: the
//! `socket-web-chat` server (the code of `cargo run -p ipc-socket --example web-chat`) serves
//! its page and WebSocket on one port and native clients on a socket file; two headless
//! Chromium sessions (chromedriver and WebDriver, through fantoccini) open the page, and a
//! native `ipc-peer` process and the Python client join the same room. Every side must see
//! the others' lines and the join and leave notices; one page is closed mid-way and the others
//! see it leave; the pages must show no error. A screenshot of a page with two participants
//! goes to `target/web-chat.png` (and to `docs/web-chat.png` with `IPC_UPDATE_SCREENSHOT=1`).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::flows::Outcome;
use crate::{Peer, TempDir};
use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};

const WAIT: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL: &str = "apt-get update && apt-get install -y chromium chromium-driver";

/// Kills a process group (chromedriver and the browsers it started) when dropped, whether
/// the test passed or failed.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// A free loopback port (bound, read and released: chromedriver takes it next).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts chromedriver in a process group of its own; returns its URL.
fn chromedriver() -> Result<(Peer, GroupGuard, String)> {
    let port = free_port()?;
    let mut command = Command::new(CHROMEDRIVER);
    command
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .process_group(0);
    let mut driver = Peer::spawn("chromedriver", command)?;
    let guard = GroupGuard(driver.pid());
    driver.expect_prefixed("ChromeDriver was started successfully", WAIT)?;
    Ok((driver, guard, format!("http://127.0.0.1:{port}")))
}

async fn browser(driver: &str) -> Result<Client> {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--disable-crash-reporter", "--disable-breakpad", "--window-size=720,560"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(driver)
        .await
        .context("start a chromium session through chromedriver")
}

/// Waits until the page's log shows a line containing `text`.
async fn page_shows(page: &Client, text: &str) -> Result<()> {
    let xpath = format!("//ul[@id='log']/li[contains(., '{text}')]");
    page.wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(&xpath))
        .await
        .with_context(|| format!("the page never showed `{text}`"))?;
    Ok(())
}

/// Fails if the page shows an error.
async fn no_error(page: &Client) -> Result<()> {
    let error = page.find(Locator::Id("error")).await?;
    if error.attr("hidden").await?.is_none() {
        bail!("the page shows an error: {}", error.text().await?);
    }
    Ok(())
}

async fn open_page(driver: &str, url: &str, name: &str) -> Result<Client> {
    let page = browser(driver).await?;
    page.goto(&format!("{url}?name={name}")).await?;
    page.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#status[data-state='connected']"))
        .await
        .with_context(|| format!("page of {name} never connected"))?;
    Ok(page)
}

async fn say(page: &Client, text: &str) -> Result<()> {
    page.find(Locator::Id("text"))
        .await?
        .send_keys(text)
        .await?;
    page.find(Locator::Id("send")).await?.click().await?;
    Ok(())
}

/// Waits for a native line, skipping others.
fn native_sees(peer: &mut Peer, line: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if peer.expect_line(left)? == line {
            return Ok(());
        }
    }
}

/// Why the browser test cannot run here (with the install command), or `None` if it can.
pub fn browser_missing() -> Option<String> {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return None;
    }
    Some(format!(
        "{CHROMIUM} or {CHROMEDRIVER} is missing (install: {INSTALL})"
    ))
}

/// Whether the browser is there; `Err` when it is absent and `IPC_REQUIRE_BROWSER=1`.
pub fn browser_present() -> Result<bool> {
    let Some(missing) = browser_missing() else {
        return Ok(true);
    };
    if std::env::var("IPC_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        bail!("IPC_REQUIRE_BROWSER=1 but {missing}");
    }
    Ok(false)
}

/// Runs the chat (see the module docs); the browser must be there ([`browser_missing`]).
pub fn web_chat() -> Result<Outcome> {
    let mut processes = 0;
    let mut messages = 0;
    let dir = TempDir::new("web-chat")?;
    let native_address = format!("unix:{}", dir.path().join("chat.sock").display());
    let mut command = Peer::role_command(
        "socket-web-chat",
        ["--http", "127.0.0.1:0", "--native", native_address.as_str()],
    )?;
    command.stdin(Stdio::piped());
    let mut server = Peer::spawn("web chat server", command)?;
    processes += 1;
    let ready = server.expect_prefixed("ready ", WAIT)?;
    let url = crate::field(&ready, "http").context("http=")?.to_owned();
    let (_driver, _driver_group, driver) = chromedriver()?;
    processes += 1;

    let mut command = Peer::role_command(
        "socket-web-peer",
        ["--address", native_address.as_str(), "--name", "native"],
    )?;
    command.stdin(Stdio::piped());
    let mut native = Peer::spawn("native", command)?;
    processes += 1;
    assert_eq!(native.expect_line(WAIT)?, "joined");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let python = runtime.block_on(async {
        let ann = open_page(&driver, &url, "ann").await?;
        page_shows(&ann, "ann joined").await?;
        native_sees(&mut native, "got notice ann joined")?;
        let bob = open_page(&driver, &url, "bob").await?;
        page_shows(&ann, "bob joined").await?;
        native_sees(&mut native, "got notice bob joined")?;

        // Page to page and page to native.
        say(&ann, "hello from ann").await?;
        page_shows(&bob, "hello from ann").await?;
        page_shows(&ann, "hello from ann").await?;
        native_sees(&mut native, "got chat ann: hello from ann")?;
        say(&bob, "hello from bob").await?;
        page_shows(&ann, "hello from bob").await?;
        native_sees(&mut native, "got chat bob: hello from bob")?;
        // Native to both pages.
        writeln!(native.stdin().context("stdin")?, "say hello from native")?;
        page_shows(&ann, "hello from native").await?;
        page_shows(&bob, "hello from native").await?;

        // The Python client joins the same room over the socket file.
        let python = crate::flows::python_chat_client();
        match &python {
            None => eprintln!("web chat: no Python client (python3 is not installed)"),
            Some(script) => {
                let mut command = Command::new("python3");
                command.arg(script).args([
                    "chat",
                    "--address",
                    native_address.as_str(),
                    "--name",
                    "py",
                    "--count",
                    "2",
                    "--expect",
                    "py",
                ]);
                command.stdin(Stdio::piped());
                let mut python = Peer::spawn("python", command)?;
                assert_eq!(python.expect_line(WAIT)?, "subscribed");
                writeln!(python.stdin().context("stdin")?, "go")?;
                python.expect_prefixed("ok", WAIT)?;
                python.wait_success(WAIT)?;
                page_shows(&ann, "py says 1").await?;
                page_shows(&bob, "py says 1").await?;
                native_sees(&mut native, "got chat py: py says 1")?;
            }
        }

        let shot = ann.screenshot().await?;
        let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/web-chat.png");
        std::fs::write(&target, &shot)?;
        if std::env::var("IPC_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/web-chat.png");
            std::fs::write(docs, &shot)?;
        }

        // Bob's browser goes away: the others see him leave.
        no_error(&bob).await?;
        bob.close().await?;
        page_shows(&ann, "bob left").await?;
        native_sees(&mut native, "got notice bob left")?;
        no_error(&ann).await?;
        ann.close().await?;
        anyhow::Ok(python.is_some())
    })?;
    // Chromium processes: two browsers. Deliveries checked: notices (2 joins on 2 sides, 1
    // leave on 2), lines (3 on 2 pages, 3 at the native peer), Python's 2 on 3 sides.
    processes += 2 + u32::from(python);
    messages += 4 + 2 + 6 + 3 + if python { 2 * 3 } else { 0 };
    native.close_stdin();
    native.expect_prefixed("ok", WAIT)?;
    native.wait_success(WAIT)?;
    server.close_stdin();
    server.expect_prefixed("ok", WAIT)?;
    Ok(Outcome {
        processes,
        messages,
        bytes: 0,
        detail: format!(
            "2 chromium pages, a native peer{} over a unix socket; screenshot target/web-chat.png",
            if python { " and the Python client" } else { "" }
        ),
    })
}
