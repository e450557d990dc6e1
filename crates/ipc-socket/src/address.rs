//! Addresses: which transport, and where.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipc_core::{Error, ErrorKind, Result};

/// Where a server listens and a client connects; the variant picks the transport.
///
/// Parsed from text with a scheme prefix, and printed back the same way:
///
/// | text | transport |
/// |---|---|
/// | `local:NAME` | a namespaced local socket: an abstract Unix socket on Linux, `\\.\pipe\NAME` on Windows; no file |
/// | `unix:/path/to/sock` | a Unix domain socket file (owner-only, mode 0600) |
/// | `tcp:HOST:PORT` | TCP; `tcp:127.0.0.1:0` lets the server pick a port ([`Server::address`] tells which) |
/// | `ws://HOST:PORT/PATH` | a WebSocket over TCP (browsers); the path defaults to `/`; each binary message carries whole frames (PROTOCOL.md, "WebSocket mapping") |
/// | `tls:HOST:PORT` | TLS over TCP (feature `tls`); the client checks the server's certificate against `HOST` |
/// | `wss://HOST:PORT/PATH` | a WebSocket over TLS over TCP (feature `tls`): TLS as for `tls:`, then the WebSocket of `ws://` |
///
/// ```
/// use ipc_socket::Address;
///
/// let tcp: Address = "tcp:127.0.0.1:9000".parse()?;
/// assert_eq!(tcp, Address::tcp("127.0.0.1:9000"));
/// let path: Address = "unix:/run/app/sock".parse()?;
/// assert_eq!(path.to_string(), "unix:/run/app/sock");
/// assert!("ftp:x".parse::<Address>().is_err());
/// # Ok::<(), ipc_core::Error>(())
/// ```
#[cfg_attr(
    feature = "tokio",
    doc = "\n[`Server::address`]: crate::Server::address"
)]
#[cfg_attr(
    not(feature = "tokio"),
    doc = "\n[`Server::address`]: crate#feature-flags"
)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// A namespaced local socket name (no file on disk).
    ///
    /// On Linux this is an abstract socket, which has no permission bits: any local user can
    /// connect. Use [`ServerConfig::allow_uids`] or a
    /// [`Path`](Address::Path) address when that matters.
    ///
    #[cfg_attr(
        feature = "tokio",
        doc = "\n[`ServerConfig::allow_uids`]: crate::ServerConfig::allow_uids"
    )]
    #[cfg_attr(
        not(feature = "tokio"),
        doc = "\n[`ServerConfig::allow_uids`]: crate#feature-flags"
    )]
    Local(String),
    /// A socket file on the filesystem.
    Path(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
    /// A WebSocket endpoint `ws://host_port` + `path` (the path starts with `/`).
    WebSocket {
        /// The TCP `host:port`.
        host_port: String,
        /// The request path, `/` when the text gave none.
        path: String,
    },
    /// TLS over TCP to `host:port`; `host` is the name the server's certificate must have.
    /// Connecting or listening needs the crate's `tls` feature, and listening a
    /// `TlsServerConfig` (`ConnectionConfig::with_tls_server`).
    Tls(String),
    /// A WebSocket over TLS, `wss://host_port` + `path`: TLS as for [`Tls`](Address::Tls)
    /// (`host` is the name the server's certificate must have), then the WebSocket of
    /// [`WebSocket`](Address::WebSocket). Needs the crate's `tls` feature, like `Tls`.
    SecureWebSocket {
        /// The TCP `host:port`.
        host_port: String,
        /// The request path, `/` when the text gave none.
        path: String,
    },
}

impl Address {
    /// A namespaced local socket name.
    pub fn local(name: impl Into<String>) -> Address {
        Address::Local(name.into())
    }

    /// A socket file path.
    pub fn path(path: impl Into<PathBuf>) -> Address {
        Address::Path(path.into())
    }

    /// A TCP `host:port`.
    pub fn tcp(host_port: impl Into<String>) -> Address {
        Address::Tcp(host_port.into())
    }

    /// A WebSocket endpoint: `host:port` and a path (`/` if empty; a missing leading `/` is
    /// added).
    pub fn websocket(host_port: impl Into<String>, path: impl Into<String>) -> Address {
        let path = path.into();
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        Address::WebSocket {
            host_port: host_port.into(),
            path,
        }
    }

    /// A WebSocket over TLS (`wss://`): `host:port` and a path, as for
    /// [`websocket`](Address::websocket).
    pub fn secure_websocket(host_port: impl Into<String>, path: impl Into<String>) -> Address {
        let Address::WebSocket { host_port, path } = Address::websocket(host_port, path) else {
            unreachable!("Address::websocket makes a WebSocket address")
        };
        Address::SecureWebSocket { host_port, path }
    }

    /// TLS over TCP to `host:port`.
    pub fn tls(host_port: impl Into<String>) -> Address {
        Address::Tls(host_port.into())
    }

    /// The socket file, for a [`Path`](Address::Path) address.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Address::Path(path) => Some(path),
            _ => None,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let empty = match self {
            Address::Local(name) => name.is_empty(),
            Address::Path(path) => path.as_os_str().is_empty(),
            Address::Tcp(host_port)
            | Address::WebSocket { host_port, .. }
            | Address::SecureWebSocket { host_port, .. }
            | Address::Tls(host_port) => host_port.is_empty(),
        };
        if empty {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("address `{self}` names nothing"),
            ));
        }
        if let Address::Tcp(host_port) | Address::Tls(host_port) = self
            && !host_port.contains(':')
        {
            let scheme = if matches!(self, Address::Tls(_)) {
                "tls"
            } else {
                "tcp"
            };
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{scheme} address `{host_port}` has no port (expected host:port)"),
            ));
        }
        if let Address::WebSocket { host_port, path }
        | Address::SecureWebSocket { host_port, path } = self
        {
            if !host_port.contains(':') {
                let scheme = if matches!(self, Address::SecureWebSocket { .. }) {
                    "wss"
                } else {
                    "ws"
                };
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "websocket address `{self}` has no port (expected {scheme}://host:port/path)"
                    ),
                ));
            }
            if !path.starts_with('/')
                || path
                    .bytes()
                    .any(|b| b <= b' ' || b == b'?' || b == b'#' || b >= 0x7f)
            {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "websocket path `{path}` must start with / and hold no spaces, controls, ? or #"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(text: &str) -> Result<Address> {
        let address = if let Some(name) = text.strip_prefix("local:") {
            Address::Local(name.to_owned())
        } else if let Some(path) = text.strip_prefix("unix:") {
            Address::Path(PathBuf::from(path))
        } else if let Some(host_port) = text.strip_prefix("tcp:") {
            Address::Tcp(host_port.to_owned())
        } else if let Some(rest) = text.strip_prefix("ws://") {
            let (host_port, path) = split_path(rest);
            Address::WebSocket { host_port, path }
        } else if let Some(rest) = text.strip_prefix("wss://") {
            let (host_port, path) = split_path(rest);
            Address::SecureWebSocket { host_port, path }
        } else if let Some(host_port) = text.strip_prefix("tls:") {
            Address::Tls(host_port.to_owned())
        } else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "address `{text}` must start with local:, unix:, tcp:, tls:, ws:// or wss://"
                ),
            ));
        };
        address.validate()?;
        Ok(address)
    }
}

/// `host:port/path` as the host and port, and the path (`/` when none).
fn split_path(rest: &str) -> (String, String) {
    match rest.find('/') {
        Some(at) => (rest[..at].to_owned(), rest[at..].to_owned()),
        None => (rest.to_owned(), "/".to_owned()),
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Local(name) => write!(f, "local:{name}"),
            Address::Path(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(host_port) => write!(f, "tcp:{host_port}"),
            Address::WebSocket { host_port, path } => write!(f, "ws://{host_port}{path}"),
            Address::Tls(host_port) => write!(f, "tls:{host_port}"),
            Address::SecureWebSocket { host_port, path } => write!(f, "wss://{host_port}{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_scheme() {
        for text in [
            "local:chat",
            "unix:/tmp/x.sock",
            "tcp:127.0.0.1:9000",
            "ws://127.0.0.1:9000/",
            "ws://localhost:80/chat/ipc",
            "tls:localhost:9000",
            "wss://localhost:9443/",
            "wss://127.0.0.1:1/chat/ipc",
        ] {
            let address: Address = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
        assert_eq!("local:a".parse::<Address>().unwrap(), Address::local("a"));
        assert_eq!(
            "ws://127.0.0.1:1".parse::<Address>().unwrap(),
            Address::websocket("127.0.0.1:1", "")
        );
        assert_eq!(
            "wss://localhost:1".parse::<Address>().unwrap(),
            Address::secure_websocket("localhost:1", "")
        );
        assert_eq!(
            Address::secure_websocket("localhost:1", "chat").to_string(),
            "wss://localhost:1/chat"
        );
        assert_ne!(
            "wss://localhost:1/".parse::<Address>().unwrap(),
            "ws://localhost:1/".parse::<Address>().unwrap()
        );
    }

    #[test]
    fn rejects_bad_addresses_with_clear_errors() {
        for (text, message) in [
            (
                "chat",
                "address `chat` must start with local:, unix:, tcp:, tls:, ws:// or wss://",
            ),
            (
                "wss://localhost/x",
                "websocket address `wss://localhost/x` has no port (expected wss://host:port/path)",
            ),
            (
                "wss://localhost:1/a?b",
                "websocket path `/a?b` must start with / and hold no spaces, controls, ? or #",
            ),
            ("wss://", "address `wss:///` names nothing"),
            (
                "ws://localhost/x",
                "websocket address `ws://localhost/x` has no port (expected ws://host:port/path)",
            ),
            (
                "ws://localhost:1/a b",
                "websocket path `/a b` must start with / and hold no spaces, controls, ? or #",
            ),
            ("local:", "address `local:` names nothing"),
            (
                "tcp:localhost",
                "tcp address `localhost` has no port (expected host:port)",
            ),
            (
                "tls:localhost",
                "tls address `localhost` has no port (expected host:port)",
            ),
        ] {
            let err = text.parse::<Address>().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert_eq!(err.to_string(), message);
        }
    }
}
