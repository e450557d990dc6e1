//! Message encoding: any `serde` type through postcard, into a caller's buffer, and back
//! from a borrowed slice.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::ser::WriteError;

/// Encodes `value` with postcard straight into `buf`, returning the number of bytes written.
///
/// Fails with [`ErrorKind::TooLarge`] when the encoding does not fit in `buf`; `buf` may then
/// hold a partial encoding, which the caller must not use.
///
/// ```
/// let mut buf = [0u8; 32];
/// let n = ipc_core::encode_into(&("hi", 7u16), &mut buf)?;
/// assert_eq!(&buf[..n], &[2, b'h', b'i', 7]);
/// # Ok::<(), ipc_core::Error>(())
/// ```
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut [u8]) -> Result<usize> {
    match try_encode_into(value, buf)? {
        Some(written) => Ok(written),
        None => Err(Error::new(
            ErrorKind::TooLarge,
            format!("message does not fit in buffer of {} bytes", buf.len()),
        )),
    }
}

/// [`encode_into`] for callers with a fallback: `Ok(None)` when the encoding does not fit
/// in `buf` (which may then hold a partial encoding), without building an error, so that
/// a caller that tries a buffer first and then makes room allocates nothing (ipc-shm's
/// send into the free part of its ring).
///
/// ```
/// let mut small = [0u8; 2];
/// assert_eq!(ipc_core::try_encode_into(&"hello", &mut small)?, None);
/// let mut buf = [0u8; 8];
/// assert_eq!(ipc_core::try_encode_into(&"hello", &mut buf)?, Some(6));
/// # Ok::<(), ipc_core::Error>(())
/// ```
#[inline(always)]
pub fn try_encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut [u8]) -> Result<Option<usize>> {
    match crate::ser::to_slice(value, buf) {
        Ok(written) => Ok(Some(written)),
        Err(WriteError(None)) => Ok(None),
        Err(WriteError(Some(message))) => Err(Error::new(
            ErrorKind::Encode,
            format!("cannot encode message: {message}"),
        )),
    }
}

/// Appends the postcard encoding of `value` to `out`, refusing to let it grow past `max_len`
/// bytes of encoding. Returns the number of bytes appended; on error `out` is left as it was.
///
/// ```
/// let mut out = Vec::new();
/// let n = ipc_core::encode_to_vec(&[1u8, 2, 3][..], &mut out, 1024)?;
/// assert_eq!(out, [3, 1, 2, 3]);
/// assert_eq!(n, 4);
/// # Ok::<(), ipc_core::Error>(())
/// ```
#[inline]
pub fn encode_to_vec<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    max_len: usize,
) -> Result<usize> {
    let start = out.len();
    let flavor = VecAppend {
        out,
        start,
        max_len,
    };
    match postcard::serialize_with_flavor::<T, VecAppend<'_>, usize>(value, flavor) {
        Ok(written) => Ok(written),
        Err(err) => {
            out.truncate(start);
            match err {
                postcard::Error::SerializeBufferFull => Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("message encoding exceeds limit of {max_len} bytes"),
                )),
                err => Err(encode_error(err)),
            }
        }
    }
}

/// The length of `value`'s postcard encoding, computed without writing it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize> {
    postcard::serialize_with_flavor::<T, _, usize>(value, postcard::ser_flavors::Size::default())
        .map_err(encode_error)
}

/// Decodes a `T` from exactly `bytes`. Borrowed fields (`&str`, `&[u8]`) point into `bytes`.
///
/// Bytes left over after the value are an error ([`ErrorKind::Decode`]), since a
/// well-behaved peer never sends them. Hostile input never panics, and no allocation grows
/// past the input's own size (a count is a size hint only when the remaining input could
/// hold that many values). The decoder is ipc-core's own reader of postcard's format,
/// which accepts and refuses exactly what postcard does, with postcard's errors.
///
/// ```
/// let (text, n): (&str, u16) = ipc_core::decode(&[2, b'h', b'i', 7])?;
/// assert_eq!((text, n), ("hi", 7));
/// # Ok::<(), ipc_core::Error>(())
/// ```
#[inline]
pub fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    match crate::de::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(trailing_bytes_error(bytes.len(), rest.len())),
        Err(err) => Err(decode_error(bytes.len(), std::any::type_name::<T>(), err)),
    }
}

/// [`decode`], with errors that name the message type as the peers agreed on it (the
/// `Hello`'s type name, e.g. `chat.Message/1`) instead of the Rust type's name: what a
/// close reason sent to a peer in another language should say.
///
/// ```
/// let err = ipc_core::decode_as::<u32>(&[0xff], "demo.Count/1").unwrap_err();
/// assert!(err.to_string().starts_with("payload of 1 bytes does not decode as demo.Count/1: "));
/// ```
#[inline]
pub fn decode_as<'de, T: Deserialize<'de>>(bytes: &'de [u8], type_name: &str) -> Result<T> {
    match crate::de::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(trailing_bytes_error(bytes.len(), rest.len())),
        Err(err) => Err(decode_error(bytes.len(), type_name, err)),
    }
}

#[cold]
fn trailing_bytes_error(len: usize, rest: usize) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!(
            "{rest} trailing bytes after a message of {} bytes",
            len - rest
        ),
    )
}

#[cold]
fn decode_error(len: usize, type_name: &str, err: postcard::Error) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("payload of {len} bytes does not decode as {type_name}: {err}"),
    )
    .with_source(err)
}

fn encode_error(err: postcard::Error) -> Error {
    Error::new(ErrorKind::Encode, format!("cannot encode message: {err}")).with_source(err)
}

/// A postcard flavor that appends to a caller's `Vec`, stopping at a length limit.
struct VecAppend<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    max_len: usize,
}

impl VecAppend<'_> {
    #[inline]
    fn room(&self) -> usize {
        self.max_len - (self.out.len() - self.start)
    }
}

impl postcard::ser_flavors::Flavor for VecAppend<'_> {
    type Output = usize;

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() > self.room() {
            return Err(postcard::Error::SerializeBufferFull);
        }
        // postcard writes every varint (lengths, integers, tags) through here, most of them
        // one byte long: a push is cheaper than a copy of unknown length.
        if let [byte] = data {
            self.out.push(*byte);
        } else {
            self.out.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.room() == 0 {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.out.push(data);
        Ok(())
    }

    #[inline]
    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.out.len() - self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Borrowing<'a> {
        name: &'a str,
        #[serde(with = "serde_bytes_compat")]
        data: &'a [u8],
    }

    // `&[u8]` needs `serialize_bytes` to borrow; serde's default for slices is a sequence.
    mod serde_bytes_compat {
        use serde::{Deserializer, Serializer};

        pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(bytes)
        }

        pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
            <&'de [u8] as serde::Deserialize<'de>>::deserialize(d)
        }
    }

    #[test]
    fn borrowed_fields_point_into_the_input() {
        let value = Borrowing {
            name: "sensor",
            data: &[1, 2, 3, 4],
        };
        let mut buf = [0u8; 64];
        let n = encode_into(&value, &mut buf).unwrap();
        let decoded: Borrowing<'_> = decode(&buf[..n]).unwrap();
        assert_eq!(decoded, value);
        let range = buf.as_ptr_range();
        assert!(range.contains(&decoded.name.as_ptr()));
        assert!(range.contains(&decoded.data.as_ptr()));
    }

    #[test]
    fn too_small_buffer_is_too_large_error() {
        let mut buf = [0u8; 3];
        let err = encode_into("hello", &mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert_eq!(err.to_string(), "message does not fit in buffer of 3 bytes");
    }

    #[test]
    fn vec_append_respects_limit_and_restores_on_error() {
        let mut out = vec![9, 9];
        let err = encode_to_vec(&vec![0u8; 100], &mut out, 50).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert_eq!(out, [9, 9]);
        let n = encode_to_vec(&vec![7u8; 3], &mut out, 50).unwrap();
        assert_eq!(n, 4);
        assert_eq!(out, [9, 9, 3, 7, 7, 7]);
        assert_eq!(encoded_len(&vec![7u8; 3]).unwrap(), 4);
    }

    #[test]
    fn trailing_bytes_and_garbage_are_decode_errors() {
        let err = decode::<u8>(&[1, 2]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert_eq!(
            err.to_string(),
            "1 trailing bytes after a message of 1 bytes"
        );

        let err = decode::<String>(&[5, b'a']).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(
            err.to_string()
                .starts_with("payload of 2 bytes does not decode as alloc::string::String")
        );

        // A length prefix claiming 2^63 elements allocates nothing of that size.
        let err = decode::<Vec<u64>>(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
    }
}
