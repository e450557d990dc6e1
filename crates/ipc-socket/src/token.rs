//! Shared-secret client authentication: the token a client presents in its handshake and
//! the list a server accepts (ipc-core's PROTOCOL.md, "Tokens").

use std::fmt;

use ipc_core::{Error, ErrorKind, MAX_TOKEN_LEN, Result};
use subtle::ConstantTimeEq as _;

/// A shared secret that a client presents to a server in its handshake.
///
/// Its bytes never appear in `Debug` output, errors or logs: `Debug` prints
/// `Token(<hidden, 24 bytes>)`. Compared in constant time.
///
/// ```
/// use ipc_socket::Token;
///
/// let token = Token::new("s3cret-for-the-chat-server")?;
/// assert_eq!(format!("{token:?}"), "Token(<hidden, 26 bytes>)");
/// assert!(Token::new("").is_err());
/// # Ok::<(), ipc_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Token(Box<[u8]>);

impl Token {
    /// A token of 1 to 1024 bytes; [`ErrorKind::InvalidInput`] otherwise.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Token> {
        let secret = secret.as_ref();
        if secret.is_empty() || secret.len() > MAX_TOKEN_LEN {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "a token of {} bytes: tokens have 1 to {MAX_TOKEN_LEN} bytes",
                    secret.len()
                ),
            ));
        }
        Ok(Token(secret.into()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant time for equal lengths; the length itself is not secret.
    fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_ref().ct_eq(presented))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<hidden, {} bytes>)", self.0.len())
    }
}

/// Whether `presented` is one of `accepted`. Every accepted token is compared, so the time
/// taken does not tell which one matched or how far a wrong one got.
pub(crate) fn accepts(accepted: &[Token], presented: &[u8]) -> bool {
    let mut found = false;
    for token in accepted {
        found |= token.matches(presented);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_same_bytes() {
        let accepted = [Token::new("alpha").unwrap(), Token::new("beta").unwrap()];
        assert!(accepts(&accepted, b"beta"));
        assert!(!accepts(&accepted, b"bet"));
        assert!(!accepts(&accepted, b"betA"));
        assert!(!accepts(&accepted, b""));
        assert!(!accepts(&[], b"beta"));
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = Token::new("hunter2").unwrap();
        let shown = format!("{token:?} {:?}", vec![token.clone()]);
        assert!(!shown.contains("hunter2"), "{shown}");
        let err = Token::new(vec![b'x'; 1025]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a token of 1025 bytes: tokens have 1 to 1024 bytes"
        );
    }
}
