//! The cross-process test harness of the ipc workspace.
//!
//! Cross-process behaviour is tested with real OS processes: the `ipc-peer` binary of this
//! package plays the other side. This library gives the tests and `cargo xtask scenarios`:
//!
//! - [`unique_name`]: a fresh name for every segment, socket and queue directory;
//! - [`Watchdog`]: ends a hung test with a message instead of hanging CI;
//! - [`Peer`]: spawns a peer, reads its stdout line by line with deadlines, kills it with
//!   SIGKILL on purpose, and reaps it (a dropped `Peer` is killed, so none is left running);
//! - [`roles`]: what a peer does, shared by the `ipc-peer` binary and xtask;
//! - [`Checksum`]: an order-sensitive digest of a message stream.

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use wait_timeout::ChildExt;

pub mod amqp;
pub mod bench;
pub mod flows;
pub mod roles;
pub mod tls;
pub mod web_chat;

/// The value of `key=value` in a peer's line of space-separated fields (`ok sent=3 ..`).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// A name unique across processes and runs: `{prefix}-{pid}-{time}-{counter}`, short enough
/// for socket paths and shm names.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// A fresh, owner-only directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/{unique_name(prefix)}` with mode 0700.
    pub fn new(prefix: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(unique_name(prefix));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&path)
            .with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Ends the whole test process if it is still alive after `timeout`: a hang becomes a clear
/// failure naming what hung. Drop it (or call [`disarm`](Watchdog::disarm)) when done.
///
/// The peers a test spawned are killed too: [`Peer`] registers them with the process-wide
/// list that the watchdog empties before it exits.
#[derive(Debug)]
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
}

impl Watchdog {
    /// Arms a watchdog for `what`.
    pub fn new(what: impl Into<String>, timeout: Duration) -> Watchdog {
        let what = what.into();
        let (disarm, disarmed) = mpsc::channel::<()>();
        thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(timeout) {
                    eprintln!("watchdog: `{what}` still running after {timeout:?}; killing peers and exiting");
                    kill_registered_peers();
                    std::process::exit(124);
                }
            })
            .expect("spawn watchdog thread");
        Watchdog {
            disarm: Some(disarm),
        }
    }

    /// Disarms the watchdog.
    pub fn disarm(mut self) {
        self.disarm.take();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(disarm) = self.disarm.take() {
            let _ = disarm.send(());
        }
    }
}

static PEERS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn register_peer(pid: u32) {
    if let Ok(mut peers) = PEERS.lock() {
        peers.push(pid);
    }
}

fn unregister_peer(pid: u32) {
    if let Ok(mut peers) = PEERS.lock() {
        peers.retain(|&p| p != pid);
    }
}

fn kill_registered_peers() {
    let pids = PEERS.lock().map(|p| p.clone()).unwrap_or_default();
    for pid in pids {
        // SIGKILL by pid: the Child handles belong to other threads.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
}

static PEER_EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes [`peer_exe`] return `path` from now on in this process (xtask uses it after building
/// the peer in the profile it wants). Returns false if a path was already set.
pub fn set_peer_exe(path: PathBuf) -> bool {
    PEER_EXE.set(path).is_ok()
}

/// The path of the `ipc-peer` binary: the one given to [`set_peer_exe`], else `IPC_PEER` if
/// set, else next to the running executable (`target/*/ipc-peer`, also from
/// `target/*/deps/` of a test).
pub fn peer_exe() -> Result<PathBuf> {
    if let Some(path) = PEER_EXE.get() {
        return Ok(path.clone());
    }
    if let Some(path) = std::env::var_os("IPC_PEER") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locate the running executable")?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(format!("ipc-peer{}", std::env::consts::EXE_SUFFIX));
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d
            .parent()
            .filter(|p| p.file_name() != Some(OsStr::new("target")));
    }
    bail!(
        "cannot find the ipc-peer binary near {}; build it with `cargo build -p ipc-tests` or set IPC_PEER",
        exe.display()
    )
}

/// A spawned peer process.
///
/// Its stdout is read line by line on a thread, so a test can wait for a line with a
/// deadline ([`expect_line`](Peer::expect_line)) instead of sleeping. Dropping a `Peer` that
/// still runs kills it with SIGKILL and reaps it.
#[derive(Debug)]
pub struct Peer {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stdin: Option<ChildStdin>,
}

impl Peer {
    /// Spawns `command` with stdout captured (and stdin piped if the command asks for it).
    /// `name` appears in every error about this peer.
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Result<Peer> {
        command.stdout(Stdio::piped());
        Peer::spawn_inner(name.into(), command)
    }

    /// Spawns `command` leaving its stdout as the command set it (for example the write end
    /// of a pipe to another peer); [`expect_line`](Peer::expect_line) then sees no lines.
    pub fn spawn_with_stdout(name: impl Into<String>, command: Command) -> Result<Peer> {
        Peer::spawn_inner(name.into(), command)
    }

    fn spawn_inner(name: String, mut command: Command) -> Result<Peer> {
        let mut child = command
            .spawn()
            .with_context(|| format!("spawn peer `{name}`: {command:?}"))?;
        register_peer(child.id());
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            thread::Builder::new()
                .name(format!("peer-{name}-stdout"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                })
                .context("spawn stdout reader")?;
        }
        Ok(Peer {
            name,
            child,
            lines,
            stdin,
        })
    }

    /// A `Command` for the `ipc-peer` binary running `role` with `args`.
    pub fn role_command<I, S>(role: &str, args: I) -> Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(peer_exe()?);
        command.arg(role).args(args);
        Ok(command)
    }

    /// Spawns the `ipc-peer` binary running `role` with `args`, stdout captured.
    pub fn spawn_role<I, S>(name: impl Into<String>, role: &str, args: I) -> Result<Peer>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Peer::spawn(name, Peer::role_command(role, args)?)
    }

    /// The peer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The peer's stdin, if the command piped it.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// Closes the peer's stdin (end of input for it).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// The next stdout line, waiting at most `timeout`.
    pub fn expect_line(&mut self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("peer `{}` printed no line within {timeout:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "peer `{}` closed its stdout (exit status {status:?}) before printing the expected line",
                    self.name
                )
            }
        }
    }

    /// Waits for a stdout line starting with `prefix` (skipping others) and returns the rest.
    pub fn expect_prefixed(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.expect_line(left)?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// Kills the peer with SIGKILL, on purpose, reaps it, and returns its exit status
    /// (which says SIGKILL, unless the peer had exited on its own just before).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.child
            .kill()
            .with_context(|| format!("kill peer `{}`", self.name))?;
        let status = self.child.wait().context("reap killed peer")?;
        unregister_peer(self.child.id());
        Ok(status)
    }

    /// Waits at most `timeout` for the peer to exit, then returns its status; on timeout the
    /// peer is killed and an error returned.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.close_stdin();
        match self.child.wait_timeout(timeout).context("wait for peer")? {
            Some(status) => {
                unregister_peer(self.child.id());
                Ok(status)
            }
            None => {
                let _ = self.kill();
                Err(anyhow!(
                    "peer `{}` did not exit within {timeout:?}; killed it",
                    self.name
                ))
            }
        }
    }

    /// Waits at most `timeout` for the peer to exit successfully.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<()> {
        let status = self.wait(timeout)?;
        if !status.success() {
            bail!("peer `{}` failed: {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        unregister_peer(self.child.id());
    }
}

/// An order-sensitive 64-bit digest of a stream of messages (FNV-1a folded over 8-byte
/// words), cheap enough for a million messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// Folds one message (its sequence number and bytes) into the digest.
    pub fn add(&mut self, seq: u64, bytes: &[u8]) {
        let mut h = (self.0 ^ seq).wrapping_mul(Self::PRIME);
        h = (h ^ bytes.len() as u64).wrapping_mul(Self::PRIME);
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(Self::PRIME);
        }
        for &byte in words.remainder() {
            h = (h ^ u64::from(byte)).wrapping_mul(Self::PRIME);
        }
        self.0 = h;
    }

    /// The digest so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The deterministic payload of message `seq` of a test stream: `len` bytes derived from
/// `seq`, so that a receiver can verify every byte without a copy of the stream.
pub fn fill_payload(seq: u64, buf: &mut [u8]) {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        // xorshift64: fast, and different for every seq.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// The examples in the workspace README, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;
