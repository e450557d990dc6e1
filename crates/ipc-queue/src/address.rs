//! Queue addresses: a directory for the embedded backend, a broker URL for RabbitMQ.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use ipc_core::{Error, ErrorKind, Result};

/// Where a queue lives; the backend follows from it.
///
/// - A path (`/var/lib/app/jobs`, `queues/jobs`) is an **embedded** queue: a directory.
/// - `amqp://user:password@host:port/vhost#queue` (or `amqps://`) is a queue on a
///   **RabbitMQ** broker: the URL (as lapin reads it, `%2f` for the default vhost `/`)
///   with the queue's name after `#`.
///
/// Strings and paths convert into addresses, so every [`Queue`](crate::Queue) constructor
/// takes either; a program switches backend by changing only that string. A directory whose
/// name starts with `amqp://` can still be given as a `Path` (or written `./amqp:/...`).
///
/// ```
/// use ipc_queue::Address;
///
/// let disk = Address::from("/var/lib/app/jobs");
/// assert_eq!(disk.path(), Some(std::path::Path::new("/var/lib/app/jobs")));
///
/// let broker = Address::from("amqp://app:secret@broker:5672/%2f#jobs");
/// assert_eq!(broker.amqp_queue(), Some("jobs"));
/// // Passwords never appear in messages.
/// assert_eq!(broker.to_string(), "amqp://app:***@broker:5672/%2f#jobs");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    kind: Kind,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Kind {
    Path(PathBuf),
    Amqp { url: String, queue: String },
}

impl Address {
    /// The embedded queue in directory `path`.
    pub fn path_of(path: impl Into<PathBuf>) -> Address {
        Address {
            kind: Kind::Path(path.into()),
        }
    }

    /// The queue `queue` on the RabbitMQ broker at `url` (`amqp://user:password@host:port/vhost`).
    pub fn amqp(url: impl Into<String>, queue: impl Into<String>) -> Address {
        Address {
            kind: Kind::Amqp {
                url: url.into(),
                queue: queue.into(),
            },
        }
    }

    /// Reads an address: `amqp://...#queue` or `amqps://...#queue` is a broker queue,
    /// anything else a directory.
    pub fn parse(text: &str) -> Address {
        if is_amqp(text) {
            let (url, queue) = text.split_once('#').unwrap_or((text, ""));
            Address::amqp(url, queue)
        } else {
            Address::path_of(text)
        }
    }

    /// The directory of an embedded queue.
    pub fn path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Path(path) => Some(path),
            Kind::Amqp { .. } => None,
        }
    }

    /// The broker URL of a RabbitMQ queue (with its password: keep it out of logs; the
    /// [`Display`](fmt::Display) form hides it).
    pub fn amqp_url(&self) -> Option<&str> {
        match &self.kind {
            Kind::Amqp { url, .. } => Some(url),
            Kind::Path(_) => None,
        }
    }

    /// The queue name of a RabbitMQ queue.
    pub fn amqp_queue(&self) -> Option<&str> {
        match &self.kind {
            Kind::Amqp { queue, .. } => Some(queue),
            Kind::Path(_) => None,
        }
    }

    /// The address of the dead-letter queue beside this one (`DIR/dead`, or `#QUEUE.dead`).
    pub(crate) fn dead_letters(&self) -> Address {
        match &self.kind {
            Kind::Path(path) => Address::path_of(path.join("dead")),
            Kind::Amqp { url, queue } => Address::amqp(url.clone(), format!("{queue}.dead")),
        }
    }

    /// Where the address leads: a directory, or a broker URL and queue name (checked).
    pub(crate) fn target(&self) -> Target<'_> {
        match &self.kind {
            Kind::Path(path) => Target::Dir(path),
            Kind::Amqp { url, queue } if queue.is_empty() => Target::Amqp(Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "amqp address {} names no queue: append #queue-name",
                    redact(url)
                ),
            ))),
            Kind::Amqp { url, queue } => Target::Amqp(Ok((url, queue))),
        }
    }
}

/// What [`Address::target`] finds.
pub(crate) enum Target<'a> {
    /// An embedded queue's directory.
    Dir(&'a Path),
    /// A broker URL and queue name, or why the address cannot name a broker queue.
    Amqp(Result<(&'a str, &'a str)>),
}

fn is_amqp(text: &str) -> bool {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("amqp://") || lower.starts_with("amqps://")
}

impl From<&str> for Address {
    fn from(text: &str) -> Address {
        Address::parse(text)
    }
}

impl From<String> for Address {
    fn from(text: String) -> Address {
        Address::parse(&text)
    }
}

impl From<&String> for Address {
    fn from(text: &String) -> Address {
        Address::parse(text)
    }
}

impl From<&Path> for Address {
    fn from(path: &Path) -> Address {
        Address::path_of(path)
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Address {
        Address::path_of(path)
    }
}

impl From<&PathBuf> for Address {
    fn from(path: &PathBuf) -> Address {
        Address::path_of(path.as_path())
    }
}

impl From<&OsStr> for Address {
    fn from(path: &OsStr) -> Address {
        match path.to_str() {
            Some(text) => Address::parse(text),
            None => Address::path_of(path),
        }
    }
}

impl From<&Address> for Address {
    fn from(address: &Address) -> Address {
        address.clone()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Path(path) => write!(f, "{}", path.display()),
            Kind::Amqp { url, queue } => write!(f, "{}#{queue}", redact(url)),
        }
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

/// `url` with its password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_pick_the_backend() {
        assert_eq!(Address::from("q").path(), Some(Path::new("q")));
        assert_eq!(
            Address::from("./amqp:/q").path(),
            Some(Path::new("./amqp:/q"))
        );
        let a = Address::from("AMQP://u:p@h:5672/%2f#jobs");
        assert_eq!(a.amqp_url(), Some("AMQP://u:p@h:5672/%2f"));
        assert_eq!(a.amqp_queue(), Some("jobs"));
        assert_eq!(a.dead_letters().amqp_queue(), Some("jobs.dead"));
        let b = Address::from("amqps://h/vhost?heartbeat=10#a#b");
        assert_eq!(b.amqp_url(), Some("amqps://h/vhost?heartbeat=10"));
        assert_eq!(b.amqp_queue(), Some("a#b"));
        // A path stays a path even when it reads like a URL.
        assert!(Address::from(PathBuf::from("amqp://x#q")).path().is_some());
        let Target::Amqp(Err(err)) = Address::from("amqp://u:secret@h/%2f").target() else {
            panic!("an amqp address without a queue is an error");
        };
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host/%2f"), "amqp://host/%2f");
        let shown = format!("{:?}", Address::from("amqp://u:pw@h/%2f#q"));
        assert!(!shown.contains("pw"), "{shown}");
    }
}
