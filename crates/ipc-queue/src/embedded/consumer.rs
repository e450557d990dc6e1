//! Typed consumers, deliveries and dead letters.

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipc_core::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;

use super::appender::Appender;
use super::fsx;
use super::index::{Finding, LogIndex};
use super::record::{HEADER_LEN, Kind};
use super::state::{Entry, StateLog, View};
use super::{EmbeddedQueue, Layout};
use crate::config::Faults;
use crate::delivery::{BackendTicket, DeadLetterRef, Delivery, Ticket};

/// Reasons stored with dead letters are cut to this many bytes.
const MAX_REASON_LEN: usize = 1024;
/// How long a consumer believes another one alive before checking its lock again.
const LIVENESS_TTL: Duration = Duration::from_millis(20);

/// Receives `T` messages from a queue, competing with the queue's other consumers (in this
/// and other processes): each message goes to one of them at a time.
///
/// Implements [`ipc_core::Receiver`], which acknowledges each message as it returns it
/// (at-most-once processing); use [`recv`](EmbeddedConsumer::recv) and [`ack`](EmbeddedConsumer::ack) for
/// at-least-once.
pub(crate) struct EmbeddedConsumer<T> {
    queue: EmbeddedQueue,
    owner: u64,
    owner_path: PathBuf,
    _owner_lock: File,
    state: StateLog,
    view: View,
    index: LogIndex,
    liveness: HashMap<u64, (bool, Instant)>,
    /// Boxed: opened only for a dead letter, and it keeps the consumer handle small.
    dead: Option<Box<Appender>>,
    buf: Vec<u8>,
    _type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> EmbeddedConsumer<T> {
    pub(crate) fn open(queue: &EmbeddedQueue) -> Result<EmbeddedConsumer<T>> {
        let layout = &queue.layout;
        fsx::ensure_dir(&layout.consumers())?;
        let owner = (u64::from(std::process::id()) << 32) ^ fastrand::u64(..);
        let owner_path = layout.consumers().join(format!("{owner:016x}.lock"));
        // The file appears under its name already locked (created under another name,
        // locked, renamed): a liveness check never finds it unlocked while we live.
        let creating = layout.consumers().join(format!("{owner:016x}.new"));
        let owner_lock = fsx::open_rw(&creating)?;
        owner_lock
            .lock()
            .map_err(|err| Error::io("lock consumer liveness file", err))?;
        std::fs::rename(&creating, &owner_path)
            .map_err(|err| Error::io("name consumer liveness file", err))?;
        remove_dead_consumer_files(layout, owner);
        let mut state = StateLog::open(layout, queue.config.compact_at)?;
        let mut view = View::default();
        let guard = state.lock()?;
        state.catch_up(&mut view, true)?;
        let mut findings = Vec::new();
        let (index, stale) = LogIndex::open(
            layout,
            queue.config.max_message_len as usize,
            view.floor,
            &mut findings,
        )?;
        let mut consumer = EmbeddedConsumer {
            queue: queue.clone(),
            owner,
            owner_path,
            _owner_lock: owner_lock,
            state,
            view,
            index,
            liveness: HashMap::new(),
            dead: None,
            buf: Vec::new(),
            _type: PhantomData,
        };
        if !stale.is_empty() {
            consumer.state.sync()?;
            for first in stale {
                remove_segment(layout, first);
            }
        }
        let report = consumer.record_findings(findings)?;
        drop(guard);
        match report {
            Some(err) => Err(err),
            None => Ok(consumer),
        }
    }

    /// Receives the next message, waiting for one.
    ///
    /// Errors: [`Corrupted`](ErrorKind::Corrupted) once for each damaged stretch of the log
    /// (its bytes are quarantined and the next call goes on past it);
    /// [`Decode`](ErrorKind::Decode) for a message that is not a `T` (it goes to the
    /// dead-letter queue; the next call goes on).
    pub(crate) fn recv(&mut self) -> Result<Delivery<T>> {
        self.recv_until(None)
    }

    /// Receives the next message if one is ready.
    pub(crate) fn try_recv(&mut self) -> Result<Option<Delivery<T>>> {
        self.try_once()
    }

    /// Receives the next message, waiting at most `timeout`:
    /// [`Timeout`](ErrorKind::Timeout) if none came.
    pub(crate) fn recv_timeout(&mut self, timeout: Duration) -> Result<Delivery<T>> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// Acknowledges a delivery: the message is done and never delivered again. Acking a
    /// delivery whose lease ran out still counts (the message was processed).
    pub(crate) fn ack(&mut self, ticket: &Ticket) -> Result<()> {
        own(ticket, "ack")?;
        self.ack_seq(ticket.seq)
    }

    /// Acknowledges the message with sequence number `seq`.
    pub(crate) fn ack_seq(&mut self, seq: u64) -> Result<()> {
        self.settle(seq, Kind::Ack, 0)
    }

    /// Acknowledges deliveries with one write to the state log (one lock, one append of
    /// all their records): the same as acknowledging each, at the cost of one.
    pub(crate) fn ack_batch(&mut self, tickets: &[&Ticket]) -> Result<()> {
        for ticket in tickets {
            own(ticket, "ack")?;
        }
        let _guard = self.state.lock()?;
        self.state.catch_up(&mut self.view, true)?;
        let mut seqs: Vec<u64> = tickets.iter().map(|ticket| ticket.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let records: Vec<(u64, u64, u64)> = seqs
            .into_iter()
            .filter(|&seq| !self.is_done(seq))
            .map(|seq| (seq, 0, self.owner))
            .collect();
        self.state
            .append_many(&mut self.view, Kind::Ack, &records)?;
        self.reclaim()
    }

    /// Gives a delivery back: it becomes deliverable again, after `delay` if given.
    pub(crate) fn nack(&mut self, ticket: &Ticket, delay: Option<Duration>) -> Result<()> {
        own(ticket, "nack")?;
        self.nack_seq(ticket.seq, delay)
    }

    pub(crate) fn nack_seq(&mut self, seq: u64, delay: Option<Duration>) -> Result<()> {
        let delay = delay.map_or(0, |d| d.as_millis() as u64);
        self.settle(seq, Kind::Nack, fsx::now_ms().saturating_add(delay))
    }

    /// Sends a delivery to the dead-letter queue with `reason`.
    pub(crate) fn reject(&mut self, ticket: &Ticket, reason: &str) -> Result<()> {
        own(ticket, "reject")?;
        self.reject_seq(ticket.seq, ticket.deliveries, reason)
    }

    pub(crate) fn reject_seq(&mut self, seq: u64, deliveries: u32, reason: &str) -> Result<()> {
        let _guard = self.state.lock()?;
        self.state.catch_up(&mut self.view, true)?;
        if self.is_done(seq) {
            return Ok(());
        }
        let Some(header) = self.index.read(seq, &mut self.buf)? else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("message {seq} is not in the log"),
            ));
        };
        self.dead_letter(seq, deliveries, header.time, &format!("rejected: {reason}"))?;
        self.reclaim()
    }

    fn is_done(&self, seq: u64) -> bool {
        seq < self.view.floor || matches!(self.view.entries.get(&seq), Some(Entry::Done))
    }

    fn settle(&mut self, seq: u64, kind: Kind, time: u64) -> Result<()> {
        let _guard = self.state.lock()?;
        self.state.catch_up(&mut self.view, true)?;
        if self.is_done(seq) {
            return Ok(());
        }
        self.state
            .append(&mut self.view, kind, seq, time, self.owner, &[])?;
        self.reclaim()
    }

    /// Deletes segments that are entirely done, and compacts the state log (under the lock).
    fn reclaim(&mut self) -> Result<()> {
        let done = self.index.prune(self.view.floor);
        if !done.is_empty() {
            // The acknowledgements must be durable before the messages disappear.
            self.state.sync()?;
            for first in done {
                remove_segment(&self.queue.layout, first);
            }
        }
        self.state.maybe_compact(&self.view)
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Delivery<T>> {
        let started = Instant::now();
        let mut backoff = Duration::from_micros(50);
        loop {
            if let Some(delivery) = self.try_once()? {
                return Ok(delivery);
            }
            let mut nap = backoff;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("no message within {} ms", started.elapsed().as_millis()),
                    ));
                }
                nap = nap.min(left);
            }
            std::thread::sleep(nap);
            backoff = (backoff * 2).min(Duration::from_millis(5));
        }
    }

    fn try_once(&mut self) -> Result<Option<Delivery<T>>> {
        let mut out = Vec::with_capacity(1);
        self.try_many(1, &mut out)?;
        Ok(out.pop())
    }

    /// Receives up to `max` messages that are ready, under one lock (one look at the
    /// state log and the segments for all of them); waits for at least one, at most
    /// `timeout`. Undecodable messages are dead-lettered as by [`recv`](Self::recv): the
    /// first one met is the error of a call that has nothing else to return, else it ends
    /// the batch (unleased) and the next call reports it.
    pub(crate) fn recv_batch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery<T>>> {
        let deadline = Instant::now() + timeout;
        let started = Instant::now();
        let mut backoff = Duration::from_micros(50);
        let mut out = Vec::with_capacity(max.min(1024));
        loop {
            let looked = self.try_many(max.max(1), &mut out);
            if !out.is_empty() {
                // Leased already: returned even if a later step of the look failed.
                return Ok(out);
            }
            looked?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no message within {} ms", started.elapsed().as_millis()),
                ));
            }
            std::thread::sleep(backoff.min(left));
            backoff = (backoff * 2).min(Duration::from_millis(5));
        }
    }

    /// Receives up to `max` messages that are ready, without waiting (none: empty).
    #[cfg(feature = "tokio")]
    pub(crate) fn try_batch(&mut self, max: usize) -> Result<Vec<Delivery<T>>> {
        let mut out = Vec::with_capacity(max.min(1024));
        match self.try_many(max, &mut out) {
            Err(_) if !out.is_empty() => Ok(out),
            Err(err) => Err(err),
            Ok(()) => Ok(out),
        }
    }

    /// Leases up to `max` ready messages into `out`, under one lock.
    fn try_many(&mut self, max: usize, out: &mut Vec<Delivery<T>>) -> Result<()> {
        let guard = self.state.lock()?;
        self.state.catch_up(&mut self.view, true)?;
        let mut findings = Vec::new();
        self.index.refresh(&self.view, &mut findings)?;
        if let Some(err) = self.record_findings(findings)? {
            return Err(err);
        }
        let config = self.queue.config.clone();
        while out.len() < max {
            let now = fsx::now_ms();
            let Some((seq, count)) = self.pick(now) else {
                return Ok(());
            };
            let header = match self.index.read(seq, &mut self.buf) {
                Ok(Some(header)) => header,
                Ok(None) => {
                    self.state.append(
                        &mut self.view,
                        Kind::Lost,
                        seq,
                        now,
                        seq.saturating_add(1),
                        &[],
                    )?;
                    continue;
                }
                Err(err) => {
                    self.state.append(
                        &mut self.view,
                        Kind::Lost,
                        seq,
                        now,
                        seq.saturating_add(1),
                        &[],
                    )?;
                    if out.is_empty() {
                        return Err(err);
                    }
                    return Ok(());
                }
            };
            if header.aux != 0 && header.aux <= now {
                let age = now.saturating_sub(header.time);
                self.dead_letter(seq, count, header.time, &format!("expired after {age} ms"))?;
                continue;
            }
            if config.max_deliveries != 0 && count >= config.max_deliveries {
                self.dead_letter(
                    seq,
                    count,
                    header.time,
                    &format!("delivered {count} times without an acknowledgement"),
                )?;
                continue;
            }
            let decoded = ipc_core::decode::<T>(&self.buf[HEADER_LEN..]);
            if decoded.is_err() && !out.is_empty() {
                // Left unleased: the next call meets it first and reports it.
                return Ok(());
            }
            let until = now.saturating_add(config.lease_ms);
            let deliveries = count.saturating_add(1);
            self.state.append(
                &mut self.view,
                Kind::Lease,
                seq,
                until,
                self.owner,
                &deliveries.to_le_bytes(),
            )?;
            match decoded {
                Ok(message) => out.push(Delivery {
                    message,
                    ticket: Ticket {
                        seq,
                        deliveries,
                        backend: BackendTicket::Embedded,
                    },
                    enqueued_ms: header.time,
                }),
                Err(err) => {
                    let reason =
                        format!("does not decode as {}: {err}", std::any::type_name::<T>());
                    self.state.catch_up(&mut self.view, true)?;
                    self.dead_letter(seq, deliveries, header.time, &reason)?;
                    drop(guard);
                    return Err(Error::new(
                        ErrorKind::Decode,
                        format!("message {seq} {reason}; moved to the dead-letter queue"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The next message to deliver: an expired or orphaned lease or a due nack first, else
    /// the oldest message never delivered. Returns its sequence number and delivery count.
    fn pick(&mut self, now: u64) -> Option<(u64, u32)> {
        let mut candidate = None;
        for (&seq, entry) in &self.view.entries {
            match *entry {
                Entry::Leased {
                    owner,
                    until,
                    count,
                } if until <= now
                    || (owner != self.owner
                        && !is_alive(&self.queue.layout, &mut self.liveness, owner)) =>
                {
                    candidate = Some((seq, count));
                    break;
                }
                Entry::Waiting { not_before, count } if not_before <= now => {
                    candidate = Some((seq, count));
                    break;
                }
                _ => {}
            }
        }
        if candidate.is_some() {
            return candidate;
        }
        // A message below `next_fresh` with no state at all had its state records damaged
        // (skipped): not known done, so deliverable again.
        if let Some(seq) = self.view.first_unknown() {
            return Some((seq, 0));
        }
        let fresh = self
            .view
            .skip_lost(self.view.next_fresh.max(self.view.floor));
        (fresh < self.index.next_seq()).then_some((fresh, 0))
    }

    /// Writes the message in `self.buf` to the dead-letter queue and marks it done (under
    /// the state lock).
    fn dead_letter(
        &mut self,
        seq: u64,
        deliveries: u32,
        enqueued_ms: u64,
        reason: &str,
    ) -> Result<()> {
        let mut cut = reason.len().min(MAX_REASON_LEN);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let reason = &reason[..cut];
        if self.dead.is_none() {
            let dead = EmbeddedQueue::open(self.queue.layout.dead())?;
            self.dead = Some(Box::new(Appender::open(
                &dead.layout,
                dead.config.max_message_len as usize,
                dead.config.segment_len,
                Faults::default(),
            )?));
        }
        let Some(dead) = self.dead.as_mut() else {
            return Ok(());
        };
        let letter = DeadLetterRef {
            seq,
            reason,
            deliveries,
            enqueued_ms,
            payload: self.buf.get(HEADER_LEN..).unwrap_or(&[]),
        };
        dead.begin_batch();
        dead.push(fsx::now_ms(), 0, |buf, max| {
            ipc_core::encode_to_vec(&letter, buf, max)
        })?;
        let Some((_, upto)) = dead.append(&mut |_, _| Ok(true))? else {
            return Ok(());
        };
        dead.sync_upto(upto)?;
        self.state.append(
            &mut self.view,
            Kind::Dead,
            seq,
            fsx::now_ms(),
            self.owner,
            reason.as_bytes(),
        )
    }

    /// Records damage found in the log as lost ranges; returns the error to report for the
    /// first stretch not reported before.
    fn record_findings(&mut self, findings: Vec<Finding>) -> Result<Option<Error>> {
        let mut report = None;
        for finding in findings {
            if finding.torn {
                continue;
            }
            let known = finding.to > finding.from && self.view.knows_lost(finding.from, finding.to);
            // Only what is not done already is lost: a missing stretch may hold messages
            // acknowledged long ago (found again because a damaged state record held the
            // floor back).
            let detail = if finding.to > finding.from {
                let range = finding.to - finding.from;
                let done = self.view.done_in(finding.from, finding.to);
                match range - done {
                    0 => format!(
                        "; no message lost (all {range} of {}..{} were done)",
                        finding.from, finding.to
                    ),
                    lost if done == 0 => format!(
                        "; messages {}..{} are lost ({lost})",
                        finding.from, finding.to
                    ),
                    lost => {
                        let shown = self.view.not_done_in(finding.from, finding.to, 8);
                        let mut list = shown
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ");
                        if lost > shown.len() as u64 {
                            list.push_str(", ...");
                        }
                        format!(
                            "; {lost} lost ({list}): the other {done} of {}..{} were done",
                            finding.from, finding.to
                        )
                    }
                }
            } else {
                String::new()
            };
            if finding.to > finding.from && !known {
                self.state.append(
                    &mut self.view,
                    Kind::Lost,
                    finding.from,
                    fsx::now_ms(),
                    finding.to,
                    &[],
                )?;
            }
            if known {
                continue;
            }
            let text = format!(
                "queue {}: {}{detail}",
                self.queue.path().display(),
                finding.what
            );
            // Kept where people look for damage too, as the error goes to one caller.
            let dir = self.queue.layout.root().join("quarantine");
            if fsx::ensure_dir(&dir).is_ok() {
                let _ = fsx::write_private(
                    &dir.join(format!(
                        "report-{}-{}-{}.txt",
                        finding.from,
                        finding.to,
                        fsx::now_ms()
                    )),
                    format!("{text}\n").as_bytes(),
                );
            }
            if report.is_none() {
                report = Some(Error::new(ErrorKind::Corrupted, text));
            }
        }
        Ok(report)
    }
}

/// Whether the consumer `owner` still holds its liveness lock.
fn is_alive(layout: &Layout, cache: &mut HashMap<u64, (bool, Instant)>, owner: u64) -> bool {
    if let Some(&(alive, checked)) = cache.get(&owner)
        && (!alive || checked.elapsed() < LIVENESS_TTL)
    {
        return alive;
    }
    let path = layout.consumers().join(format!("{owner:016x}.lock"));
    let alive = match fsx::open_existing(&path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
        Ok(file) => match file.try_lock() {
            Ok(()) => {
                // Its process is gone (the kernel released the lock): tidy up.
                let _ = std::fs::remove_file(&path);
                false
            }
            Err(TryLockError::WouldBlock) => true,
            Err(TryLockError::Error(_)) => true,
        },
    };
    cache.insert(owner, (alive, Instant::now()));
    alive
}

/// Removes the liveness files of consumers that died holding no lease (nobody else would
/// ever look at them).
fn remove_dead_consumer_files(layout: &Layout, me: u64) {
    let Ok(entries) = std::fs::read_dir(layout.consumers()) else {
        return;
    };
    let mut cache = HashMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|name| name.ends_with(".new")) {
            // A consumer that died while it was being opened (old enough that it is not
            // opening right now).
            let stale = entry
                .metadata()
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if stale
                && let Ok(file) = fsx::open_existing(&entry.path())
                && file.try_lock().is_ok()
            {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        let Some(owner) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".lock"))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        if owner != me {
            // Removes the file if its owner is gone.
            is_alive(layout, &mut cache, owner);
        }
    }
}

/// A delivery from another backend cannot be settled here.
#[cfg_attr(not(feature = "amqp"), allow(unused_variables))]
fn own(ticket: &Ticket, what: &str) -> Result<()> {
    match ticket.backend {
        BackendTicket::Embedded => Ok(()),
        #[cfg(feature = "amqp")]
        BackendTicket::Amqp { .. } => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{what} of message {}: the delivery did not come from an embedded consumer",
                ticket.seq
            ),
        )),
    }
}

fn remove_segment(layout: &Layout, first: u64) {
    let _ = std::fs::remove_file(layout.segments().join(fsx::segment_name(first)));
}

impl<T> Drop for EmbeddedConsumer<T> {
    fn drop(&mut self) {
        // Others see the missing file as a dead consumer and take its leases back at once.
        let _ = std::fs::remove_file(&self.owner_path);
    }
}

impl<T> std::fmt::Debug for EmbeddedConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedConsumer")
            .field("queue", &self.queue.path())
            .field("owner", &format_args!("{:016x}", self.owner))
            .finish()
    }
}
