//! Payload layouts of the pattern frames (ipc-core's PROTOCOL.md, section 5): topics and
//! publications.

use ipc_core::{
    Error, ErrorKind, FrameHeader, FrameKind, HEADER_LEN, Limits, MAX_NAME_LEN, Result,
};
use serde::Serialize;

/// Checks a topic: UTF-8, at most [`MAX_NAME_LEN`] bytes.
pub(crate) fn parse_topic(bytes: &[u8]) -> Result<&str> {
    if bytes.len() > MAX_NAME_LEN {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "topic of {} bytes exceeds limit of {MAX_NAME_LEN}",
                bytes.len()
            ),
        ));
    }
    std::str::from_utf8(bytes).map_err(|err| {
        Error::new(
            ErrorKind::Protocol,
            format!(
                "topic is not utf-8 (invalid byte at offset {})",
                err.valid_up_to()
            ),
        )
    })
}

pub(crate) fn check_topic_arg(topic: &str) -> Result<()> {
    if topic.len() > MAX_NAME_LEN {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "topic of {} bytes exceeds limit of {MAX_NAME_LEN}",
                topic.len()
            ),
        ));
    }
    Ok(())
}

/// Splits a publish payload into its topic and the message bytes.
pub(crate) fn parse_publish(payload: &[u8]) -> Result<(&str, &[u8])> {
    let Some(len) = payload.first_chunk::<2>() else {
        return Err(Error::truncated("publish payload", payload.len(), 2));
    };
    let len = usize::from(u16::from_le_bytes(*len));
    let Some(topic) = payload.get(2..2 + len) else {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "publish topic declares {len} bytes but only {} follow",
                payload.len() - 2
            ),
        ));
    };
    Ok((parse_topic(topic)?, &payload[2 + len..]))
}

/// Appends a frame whose payload is `prefix` followed by `value`'s postcard encoding.
pub(crate) fn encode_prefixed<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    kind: FrameKind,
    id: u32,
    prefix: &[&[u8]],
    value: &T,
    limits: &Limits,
) -> Result<usize> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    for part in prefix {
        out.extend_from_slice(part);
    }
    let prefix_len = out.len() - start - HEADER_LEN;
    let max = (limits.max_frame_len() as usize).saturating_sub(prefix_len);
    if let Err(err) = ipc_core::encode_to_vec(value, out, max) {
        out.truncate(start);
        return Err(err);
    }
    let payload_len = out.len() - start - HEADER_LEN;
    let header = FrameHeader::new(kind, id, payload_len as u32).to_bytes();
    out[start..start + HEADER_LEN].copy_from_slice(&header);
    Ok(out.len() - start)
}

/// Appends a publish frame of `value` on `topic`.
pub(crate) fn encode_publish<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    topic: &str,
    value: &T,
    limits: &Limits,
) -> Result<usize> {
    check_topic_arg(topic)?;
    let len = (topic.len() as u16).to_le_bytes();
    encode_prefixed(
        out,
        FrameKind::Publish,
        0,
        &[&len, topic.as_bytes()],
        value,
        limits,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_core::Frame;

    #[test]
    fn publish_round_trips() {
        let limits = Limits::default();
        let mut out = Vec::new();
        encode_publish(&mut out, "chat/room", &(7u8, "hi"), &limits).unwrap();
        let (frame, used) = Frame::parse(&out, &limits).unwrap();
        assert_eq!(used, out.len());
        assert_eq!(frame.kind(), FrameKind::Publish);
        let (topic, message) = parse_publish(frame.payload()).unwrap();
        assert_eq!(topic, "chat/room");
        assert_eq!(ipc_core::decode::<(u8, &str)>(message).unwrap(), (7, "hi"));
    }

    #[test]
    fn the_publish_golden_vector_of_protocol_md_is_exact() {
        let mut out = Vec::new();
        encode_publish(&mut out, "chat", "hi", &Limits::default()).unwrap();
        let expected = [
            0xa7, 0x1c, 0x01, 0x0b, 0, 0, 0, 0, 0x09, 0, 0, 0, 0, 0, 0, 0, 0x04, 0x00, b'c', b'h',
            b'a', b't', 0x02, b'h', b'i',
        ];
        assert_eq!(out, expected);
        // The same bytes are ipc-core's golden vector `publish`, shown in PROTOCOL.md.
    }

    #[test]
    fn bad_publish_payloads_are_errors() {
        assert_eq!(
            parse_publish(&[1]).unwrap_err().kind(),
            ErrorKind::Truncated
        );
        assert_eq!(
            parse_publish(&[5, 0, b'a']).unwrap_err().to_string(),
            "publish topic declares 5 bytes but only 1 follow"
        );
        assert_eq!(
            parse_publish(&[1, 0, 0xFF]).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }
}
