//! A serde serializer that writes postcard's wire format (version 1, PROTOCOL.md section 6)
//! straight into a slice.
//!
//! postcard's own serializer produces the same bytes, but its entry point and its varint
//! writer are not marked for inlining: in a large binary each message then costs several
//! calls, and a 10-byte scratch buffer for every length. Here the common cases (one-byte
//! varints, short byte strings, struct fields) are inlined into the caller and the rare
//! long varints are out of line. A property test checks that the bytes equal postcard's
//! for every kind of value.

use std::fmt;

use serde::ser::{self, Serialize};

/// Why serialising stopped: the slice is full (`None`), or the value refused (`Some`).
///
/// A thin box keeps `Result<(), WriteError>` at two words, returned in registers by every
/// inlined serializer call; a `Box<str>` would make it three, returned through memory.
#[allow(clippy::box_collection)]
#[derive(Debug)]
pub(crate) struct WriteError(pub(crate) Option<Box<String>>);

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("buffer full"),
            Some(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for WriteError {}

impl ser::Error for WriteError {
    #[cold]
    fn custom<T: fmt::Display>(message: T) -> WriteError {
        WriteError(Some(Box::new(message.to_string())))
    }
}

type Result<T = ()> = std::result::Result<T, WriteError>;

#[cold]
fn full() -> WriteError {
    WriteError(None)
}

/// Writes postcard bytes into `buf` from position `pos`.
pub(crate) struct SliceWriter<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) pos: usize,
}

/// Encodes `value` at the start of `buf`; returns the number of bytes written.
#[inline(always)]
pub(crate) fn to_slice<T: Serialize + ?Sized>(value: &T, buf: &mut [u8]) -> Result<usize> {
    let mut writer = SliceWriter { buf, pos: 0 };
    value.serialize(&mut writer)?;
    Ok(writer.pos)
}

impl SliceWriter<'_> {
    #[inline(always)]
    fn push(&mut self, byte: u8) -> Result {
        match self.buf.get_mut(self.pos) {
            Some(slot) => {
                *slot = byte;
                self.pos += 1;
                Ok(())
            }
            None => Err(full()),
        }
    }

    #[inline(always)]
    fn extend(&mut self, bytes: &[u8]) -> Result {
        let end = self.pos + bytes.len();
        match self.buf.get_mut(self.pos..end) {
            Some(slot) => {
                slot.copy_from_slice(bytes);
                self.pos = end;
                Ok(())
            }
            None => Err(full()),
        }
    }

    /// An unsigned LEB128 varint: one byte below 128, inline; longer ones out of line.
    #[inline(always)]
    fn varint(&mut self, value: u64) -> Result {
        if value < 0x80 {
            return self.push(value as u8);
        }
        self.varint_u64(value)
    }

    /// A varint of two to ten bytes, written in place when ten bytes are left (no
    /// 128-bit arithmetic, no staging array); near the end of the slice, through
    /// [`varint_long`](Self::varint_long).
    #[inline(never)]
    fn varint_u64(&mut self, mut value: u64) -> Result {
        let Some(out) = self.buf.get_mut(self.pos..self.pos + 10) else {
            return self.varint_long(u128::from(value));
        };
        let mut len = 0;
        while value >= 0x80 {
            out[len] = value as u8 | 0x80;
            value >>= 7;
            len += 1;
        }
        out[len] = value as u8;
        self.pos += len + 1;
        Ok(())
    }

    #[inline(never)]
    fn varint_long(&mut self, mut value: u128) -> Result {
        let mut bytes = [0u8; 19];
        let mut len = 0;
        loop {
            let byte = (value & 0x7F) as u8;
            value >>= 7;
            if value == 0 {
                bytes[len] = byte;
                len += 1;
                break;
            }
            bytes[len] = byte | 0x80;
            len += 1;
        }
        self.extend(&bytes[..len])
    }

    #[inline(always)]
    fn length(&mut self, len: usize) -> Result {
        self.varint(len as u64)
    }

    /// The element count that starts a sequence or map; postcard cannot do without it.
    #[inline]
    fn counted(&mut self, len: Option<usize>, what: &str) -> Result<&mut Self> {
        match len {
            Some(len) => {
                self.length(len)?;
                Ok(self)
            }
            None => Err(ser::Error::custom(format!(
                "{what} of unknown length (postcard needs the length first)"
            ))),
        }
    }
}

/// Zigzag: small magnitudes of either sign become small unsigned numbers.
macro_rules! zigzag {
    ($value:expr, $signed:ty, $unsigned:ty) => {
        (($value << 1) ^ ($value >> (<$signed>::BITS - 1))) as $unsigned
    };
}

impl<'a> ser::Serializer for &mut SliceWriter<'a> {
    type Ok = ();
    type Error = WriteError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result {
        self.push(u8::from(v))
    }

    #[inline]
    fn serialize_i8(self, v: i8) -> Result {
        self.push(v as u8)
    }

    #[inline]
    fn serialize_i16(self, v: i16) -> Result {
        self.varint(u64::from(zigzag!(v, i16, u16)))
    }

    #[inline]
    fn serialize_i32(self, v: i32) -> Result {
        self.varint(u64::from(zigzag!(v, i32, u32)))
    }

    #[inline]
    fn serialize_i64(self, v: i64) -> Result {
        self.varint(zigzag!(v, i64, u64))
    }

    fn serialize_i128(self, v: i128) -> Result {
        self.varint_long(zigzag!(v, i128, u128))
    }

    #[inline]
    fn serialize_u8(self, v: u8) -> Result {
        self.push(v)
    }

    #[inline]
    fn serialize_u16(self, v: u16) -> Result {
        self.varint(u64::from(v))
    }

    #[inline]
    fn serialize_u32(self, v: u32) -> Result {
        self.varint(u64::from(v))
    }

    #[inline]
    fn serialize_u64(self, v: u64) -> Result {
        self.varint(v)
    }

    fn serialize_u128(self, v: u128) -> Result {
        self.varint_long(v)
    }

    #[inline]
    fn serialize_f32(self, v: f32) -> Result {
        self.extend(&v.to_le_bytes())
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result {
        self.extend(&v.to_le_bytes())
    }

    #[inline]
    fn serialize_char(self, v: char) -> Result {
        let mut utf8 = [0u8; 4];
        self.serialize_str(v.encode_utf8(&mut utf8))
    }

    #[inline(always)]
    fn serialize_str(self, v: &str) -> Result {
        self.length(v.len())?;
        self.extend(v.as_bytes())
    }

    #[inline(always)]
    fn serialize_bytes(self, v: &[u8]) -> Result {
        self.length(v.len())?;
        self.extend(v)
    }

    #[inline]
    fn serialize_none(self) -> Result {
        self.push(0)
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        self.push(1)?;
        value.serialize(self)
    }

    #[inline]
    fn serialize_unit(self) -> Result {
        Ok(())
    }

    #[inline]
    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        Ok(())
    }

    #[inline]
    fn serialize_unit_variant(self, _name: &'static str, index: u32, _variant: &str) -> Result {
        self.varint(u64::from(index))
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result {
        self.varint(u64::from(index))?;
        value.serialize(self)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self> {
        self.counted(len, "sequence")
    }

    #[inline]
    fn serialize_tuple(self, _len: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self> {
        self.varint(u64::from(index))?;
        Ok(self)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self> {
        self.counted(len, "map")
    }

    #[inline(always)]
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self> {
        self.varint(u64::from(index))?;
        Ok(self)
    }
}

/// The compound serializers: elements and fields follow each other with nothing between.
macro_rules! compound {
    ($trait:ident, $method:ident $(, $key:ident)?) => {
        impl ser::$trait for &mut SliceWriter<'_> {
            type Ok = ();
            type Error = WriteError;

            #[inline(always)]
            fn $method<T: Serialize + ?Sized>(&mut self, $($key: &'static str,)? value: &T) -> Result {
                $(let _ = $key;)?
                value.serialize(&mut **self)
            }

            #[inline(always)]
            fn end(self) -> Result {
                Ok(())
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);
compound!(SerializeStruct, serialize_field, key);
compound!(SerializeStructVariant, serialize_field, key);

impl ser::SerializeMap for &mut SliceWriter<'_> {
    type Ok = ();
    type Error = WriteError;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result {
        key.serialize(&mut **self)
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        value.serialize(&mut **self)
    }

    #[inline]
    fn end(self) -> Result {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Serialize;

    use super::to_slice;

    #[derive(Serialize, Debug, Clone)]
    enum Shape {
        Unit,
        Newtype(i32),
        Tuple(u8, String),
        Struct { x: f32, y: Option<i64> },
    }

    #[derive(Serialize, Debug, Clone)]
    struct Everything {
        flag: bool,
        small: (i8, u8, i16, u16),
        words: (i32, u32, i64, u64),
        wide: (i128, u128),
        floats: (f32, f64),
        letter: char,
        text: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        plain: Vec<u16>,
        maybe: Option<Box<Everything>>,
        shapes: Vec<Shape>,
        map: BTreeMap<String, u32>,
        unit: (),
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Unit),
            any::<i32>().prop_map(Shape::Newtype),
            (any::<u8>(), ".{0,20}").prop_map(|(a, b)| Shape::Tuple(a, b)),
            (any::<f32>(), any::<Option<i64>>()).prop_map(|(x, y)| Shape::Struct { x, y }),
        ]
    }

    fn leaf() -> impl Strategy<Value = Everything> {
        (
            any::<bool>(),
            any::<(i8, u8, i16, u16)>(),
            any::<(i32, u32, i64, u64)>(),
            any::<(i128, u128)>(),
            any::<(f32, f64)>(),
            any::<char>(),
            ".{0,200}",
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(any::<u16>(), 0..20),
            proptest::collection::vec(shape(), 0..5),
            proptest::collection::btree_map(".{0,8}", any::<u32>(), 0..5),
        )
            .prop_map(
                |(flag, small, words, wide, floats, letter, text, bytes, plain, shapes, map)| {
                    Everything {
                        flag,
                        small,
                        words,
                        wide,
                        floats,
                        letter,
                        text,
                        bytes,
                        plain,
                        maybe: None,
                        shapes,
                        map,
                        unit: (),
                    }
                },
            )
    }

    fn everything() -> impl Strategy<Value = Everything> {
        (leaf(), proptest::option::of(leaf())).prop_map(|(mut outer, inner)| {
            outer.maybe = inner.map(Box::new);
            outer
        })
    }

    proptest! {
        #[test]
        fn bytes_equal_postcards(value in everything()) {
            let expected = postcard::to_stdvec(&value).unwrap();
            let mut buf = vec![0u8; expected.len() + 8];
            let n = to_slice(&value, &mut buf).unwrap();
            prop_assert_eq!(&buf[..n], &expected[..]);
            // A slice of exactly the length: the last varints take the path for the end of
            // a slice (fewer than ten bytes left).
            let exact = to_slice(&value, &mut buf[..expected.len()]).unwrap();
            prop_assert_eq!(&buf[..exact], &expected[..]);
            // One byte short is "full", never a panic or a wrong length.
            if !expected.is_empty() {
                let short = to_slice(&value, &mut buf[..expected.len() - 1]);
                prop_assert!(matches!(short, Err(super::WriteError(None))));
            }
        }

        #[test]
        fn integers_at_every_varint_width_equal_postcards(shift in 0u32..128, low in any::<u64>()) {
            let value = (u128::from(low) << shift.min(64)) >> (shift - shift.min(64));
            let signed = value as i128;
            let values = (value, signed, value as u64, value as i64, value as u32, value as i32);
            let expected = postcard::to_stdvec(&values).unwrap();
            let mut buf = [0xa5u8; 64];
            let n = to_slice(&values, &mut buf).unwrap();
            prop_assert_eq!(&buf[..n], &expected[..]);
            // Nothing is written past the encoding.
            prop_assert!(buf[n..].iter().all(|&b| b == 0xa5));
            let exact = to_slice(&values, &mut buf[..expected.len()]).unwrap();
            prop_assert_eq!(&buf[..exact], &expected[..]);
        }
    }

    #[test]
    fn unknown_lengths_are_refused_with_a_message() {
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let seq = s.serialize_seq(None)?;
                seq.end()
            }
        }
        let err = to_slice(&Unsized, &mut [0u8; 8]).unwrap_err();
        assert!(err.to_string().contains("unknown length"), "{err}");
    }
}
