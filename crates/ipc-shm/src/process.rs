//! Process identity and liveness: a pid plus the process's start time, so that a reused pid
//! is not mistaken for the process that wrote it.

use crate::sys;

/// A process as recorded in shared memory: its pid and its start time in clock ticks since
/// boot (field 22 of `/proc/<pid>/stat`; 0 when unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessId {
    pub(crate) pid: u32,
    pub(crate) start: u64,
}

impl ProcessId {
    /// This process.
    pub(crate) fn current() -> ProcessId {
        let pid = std::process::id();
        ProcessId {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// Process `pid` as it is now (start time 0 if it does not exist).
    #[cfg(test)]
    pub(crate) fn of(pid: u32) -> ProcessId {
        ProcessId {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// True while the process runs (or is a zombie not yet reaped). A pid of 0 is never alive.
    pub(crate) fn is_alive(self) -> bool {
        if !sys::pid_exists(self.pid) {
            return false;
        }
        if self.start == 0 {
            return true;
        }
        // The pid exists: it is ours unless it was reused by a process started later.
        match start_time(self.pid) {
            Some(start) => start == self.start,
            None => sys::pid_exists(self.pid),
        }
    }
}

impl ProcessId {
    /// True if the process has exited and waits to be reaped: it holds no files any more.
    pub(crate) fn is_zombie(self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        // The state (field 3) is the first field after the command name.
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_ascii_whitespace().next())
            .is_some_and(|state| state == "Z")
    }
}

/// The start time of `pid` in clock ticks since boot, from `/proc/<pid>/stat`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or parentheses:
    // the fields after the last ')' are plain numbers. Start time is field 22, the 20th
    // after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessId::current();
        assert_ne!(me.start, 0);
        assert!(me.is_alive());
        assert!(!me.is_zombie());
        assert!(
            !ProcessId {
                start: me.start + 1,
                ..me
            }
            .is_alive()
        );
        assert!(!ProcessId { pid: 0, start: 0 }.is_alive());
        assert!(
            !ProcessId {
                pid: u32::MAX,
                start: 0
            }
            .is_alive()
        );
    }
}
