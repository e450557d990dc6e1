//! Our serde deserializer of postcard's format from a slice: the twin of `ser.rs`.
//!
//! postcard's own deserializer is generic over "flavors" and takes a varint one checked
//! byte at a time through the flavor; a typed message through shared memory spent about a
//! fifth of its receive on that. This one reads a borrowed slice directly, with the
//! one-byte varint inline, those of up to eight bytes from one 8-byte load when eight
//! bytes are left (no loop), and the rest in a loop over the slice. It accepts exactly
//! what postcard 1.x accepts and fails with the same `postcard::Error` for the same input
//! (property tests below hold both equal), so error messages do not change.

use postcard::Error;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

type Result<T> = std::result::Result<T, Error>;

/// Reads postcard from `input`, which shrinks as values are taken from its front.
pub(crate) struct SliceDeserializer<'de> {
    pub(crate) input: &'de [u8],
}

/// A varint reader for one width: at most `$max` bytes, the last one at most `$last`
/// (postcard's `varint_max` and `max_of_last_byte`).
macro_rules! varint {
    ($name:ident, $long:ident, $t:ty, $max:expr, $last:expr) => {
        #[inline(always)]
        fn $name(&mut self) -> Result<$t> {
            match self.input.split_first() {
                Some((&byte, rest)) if byte < 0x80 => {
                    self.input = rest;
                    Ok(<$t>::from(byte))
                }
                _ => match self.varint_short($max - 1) {
                    // At most `$max - 1` bytes of 7 bits: the value fits `$t`.
                    Some(value) => Ok(value as $t),
                    None => self.$long(),
                },
            }
        }

        #[inline(never)]
        fn $long(&mut self) -> Result<$t> {
            let mut out: $t = 0;
            for i in 0..$max {
                let Some(&byte) = self.input.get(i) else {
                    return Err(Error::DeserializeUnexpectedEnd);
                };
                out |= <$t>::from(byte & 0x7F) << (7 * i);
                if byte < 0x80 {
                    if i == $max - 1 && byte > $last {
                        return Err(Error::DeserializeBadVarint);
                    }
                    self.input = &self.input[i + 1..];
                    return Ok(out);
                }
            }
            Err(Error::DeserializeBadVarint)
        }
    };
}

impl<'de> SliceDeserializer<'de> {
    /// A varint of two to `most` (at most eight) bytes read from one 8-byte load without a
    /// loop, when eight bytes are left; `None` otherwise (the caller's loop decides then).
    #[inline(always)]
    fn varint_short(&mut self, most: usize) -> Option<u64> {
        let (word, _) = self.input.split_first_chunk::<8>()?;
        let word = u64::from_le_bytes(*word);
        // The low bit of each byte's stop mark: the first byte below 0x80 ends the varint.
        let stops = !word & 0x8080_8080_8080_8080;
        if stops == 0 {
            return None;
        }
        let len = (stops.trailing_zeros() as usize + 1) / 8;
        if len > most.min(8) {
            return None;
        }
        // Keep the varint's bytes, drop their continuation bits, and close the gaps.
        let kept = if len == 8 {
            word
        } else {
            word & ((1u64 << (8 * len)) - 1)
        };
        let mut value = kept & 0x7f7f_7f7f_7f7f_7f7f;
        value = (value & 0x007f_007f_007f_007f) | ((value & 0x7f00_7f00_7f00_7f00) >> 1);
        value = (value & 0x0000_3fff_0000_3fff) | ((value & 0x3fff_0000_3fff_0000) >> 2);
        value = (value & 0x0000_0000_0fff_ffff) | ((value & 0x0fff_ffff_0000_0000) >> 4);
        self.input = &self.input[len..];
        Some(value)
    }

    #[inline(always)]
    fn pop(&mut self) -> Result<u8> {
        let (&byte, rest) = self
            .input
            .split_first()
            .ok_or(Error::DeserializeUnexpectedEnd)?;
        self.input = rest;
        Ok(byte)
    }

    #[inline(always)]
    fn take(&mut self, len: usize) -> Result<&'de [u8]> {
        if len > self.input.len() {
            return Err(Error::DeserializeUnexpectedEnd);
        }
        let (taken, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(taken)
    }

    #[inline(always)]
    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (taken, rest) = self
            .input
            .split_first_chunk::<N>()
            .ok_or(Error::DeserializeUnexpectedEnd)?;
        self.input = rest;
        Ok(*taken)
    }

    varint!(varint_u16, varint_u16_long, u16, 3, 0x03);
    varint!(varint_u32, varint_u32_long, u32, 5, 0x0F);
    varint!(varint_u64, varint_u64_long, u64, 10, 0x01);
    varint!(varint_u128, varint_u128_long, u128, 19, 0x03);

    #[inline(always)]
    fn varint_usize(&mut self) -> Result<usize> {
        // A length past the address space cannot be satisfied by the input anyway; on
        // 64-bit targets this is the identity, as in postcard.
        self.varint_u64()
            .map(|len| usize::try_from(len).unwrap_or(usize::MAX))
    }
}

struct Counted<'a, 'de> {
    de: &'a mut SliceDeserializer<'de>,
    len: usize,
}

impl<'de> de::SeqAccess<'de> for Counted<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_element_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<Option<V::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    /// The count, unless the input is too short to hold that many values of a byte each:
    /// then no hint, so that a hostile count cannot make the caller reserve memory for it.
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        (self.len <= self.de.input.len()).then_some(self.len)
    }
}

impl<'de> de::MapAccess<'de> for Counted<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    /// As postcard: the count (serde's collections cap what they reserve from it).
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        Some(self.len)
    }
}

fn zigzag_16(n: u16) -> i16 {
    ((n >> 1) as i16) ^ (-((n & 1) as i16))
}

fn zigzag_32(n: u32) -> i32 {
    ((n >> 1) as i32) ^ (-((n & 1) as i32))
}

fn zigzag_64(n: u64) -> i64 {
    ((n >> 1) as i64) ^ (-((n & 1) as i64))
}

fn zigzag_128(n: u128) -> i128 {
    ((n >> 1) as i128) ^ (-((n & 1) as i128))
}

impl<'de> de::Deserializer<'de> for &mut SliceDeserializer<'de> {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    /// postcard is not self-describing.
    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(Error::WontImplement)
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pop()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(Error::DeserializeBadBool),
        }
    }

    #[inline]
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i8(self.pop()? as i8)
    }

    #[inline]
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i16(zigzag_16(self.varint_u16()?))
    }

    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i32(zigzag_32(self.varint_u32()?))
    }

    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i64(zigzag_64(self.varint_u64()?))
    }

    #[inline]
    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i128(zigzag_128(self.varint_u128()?))
    }

    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u8(self.pop()?)
    }

    #[inline]
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u16(self.varint_u16()?)
    }

    #[inline]
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(self.varint_u32()?)
    }

    #[inline]
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(self.varint_u64()?)
    }

    #[inline]
    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u128(self.varint_u128()?)
    }

    #[inline]
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f32(f32::from_le_bytes(self.take_array()?))
    }

    #[inline]
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(f64::from_le_bytes(self.take_array()?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        if len > 4 {
            return Err(Error::DeserializeBadChar);
        }
        let bytes = self.take(len)?;
        // Exactly one char, as postcard demands.
        let mut chars = std::str::from_utf8(bytes)
            .map_err(|_| Error::DeserializeBadChar)?
            .chars();
        let letter = chars.next().ok_or(Error::DeserializeBadChar)?;
        if chars.next().is_some() {
            return Err(Error::DeserializeBadChar);
        }
        visitor.visit_char(letter)
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        let bytes = self.take(len)?;
        visitor
            .visit_borrowed_str(std::str::from_utf8(bytes).map_err(|_| Error::DeserializeBadUtf8)?)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        visitor.visit_borrowed_bytes(self.take(len)?)
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pop()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            _ => Err(Error::DeserializeBadOption),
        }
    }

    /// Unit and unit structs take no bytes.
    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        visitor.visit_seq(Counted { de: self, len })
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(Counted { de: self, len })
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_seq(Counted { de: self, len })
    }

    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        visitor.visit_map(Counted { de: self, len })
    }

    /// A struct is its fields in order, like a tuple.
    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_seq(Counted {
            de: self,
            len: fields.len(),
        })
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_enum(self)
    }

    /// postcard encodes no identifiers.
    fn deserialize_identifier<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(Error::WontImplement)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(Error::WontImplement)
    }
}

impl<'de> de::EnumAccess<'de> for &mut SliceDeserializer<'de> {
    type Error = Error;
    type Variant = Self;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = self.varint_u32()?;
        let value = seed.deserialize(index.into_deserializer())?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut SliceDeserializer<'de> {
    type Error = Error;

    #[inline]
    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn newtype_variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<V::Value> {
        seed.deserialize(self)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(Counted { de: self, len })
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_seq(Counted {
            de: self,
            len: fields.len(),
        })
    }
}

/// Decodes a `T` from the front of `bytes`; the bytes after it are returned with it.
#[inline(always)]
pub(crate) fn take_from_bytes<'de, T: de::Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<(T, &'de [u8])> {
    let mut de = SliceDeserializer { input: bytes };
    let value = T::deserialize(&mut de)?;
    Ok((value, de.input))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::{Result, take_from_bytes};

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    enum Shape {
        Unit,
        Newtype(i32),
        Tuple(u8, String),
        Struct { x: f64, y: Option<i64> },
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Everything<'a> {
        flag: bool,
        small: (i8, u8, i16, u16),
        words: (i32, u32, i64, u64),
        wide: (i128, u128),
        floats: (f32, f64),
        letter: char,
        text: String,
        #[serde(borrow)]
        borrowed: &'a str,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        #[serde(borrow, with = "serde_bytes")]
        borrowed_bytes: &'a [u8],
        plain: Vec<u16>,
        shapes: Vec<Shape>,
        map: BTreeMap<String, u32>,
        maybe: Option<Box<(u64, Shape)>>,
        unit: (),
    }

    /// Ours and postcard's on the same bytes: the same value and the same rest, or the
    /// same error.
    fn same<'a, T>(bytes: &'a [u8]) -> std::result::Result<(), TestCaseError>
    where
        T: Deserialize<'a> + PartialEq + std::fmt::Debug,
    {
        let ours = take_from_bytes::<T>(bytes);
        let theirs = postcard::take_from_bytes::<T>(bytes);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "ours {:?}, postcard {:?}", ours, theirs),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn values_decode_as_postcard_decodes_them(
            flag in any::<bool>(),
            small in any::<(i8, u8, i16, u16)>(),
            words in any::<(i32, u32, i64, u64)>(),
            wide in any::<(i128, u128)>(),
            floats in any::<(u32, u64)>(),
            letter in any::<char>(),
            text in ".{0,40}",
            bytes in proptest::collection::vec(any::<u8>(), 0..100),
            plain in proptest::collection::vec(any::<u16>(), 0..20),
            map in proptest::collection::btree_map(".{0,8}", any::<u32>(), 0..5),
            maybe in proptest::option::of((any::<u64>(), any::<i32>())),
        ) {
            let value = Everything {
                flag,
                small,
                words,
                wide,
                // Bit patterns, so that NaN compares equal with itself below.
                floats: (f32::from_bits(floats.0 & 0x7F7F_FFFF), f64::from_bits(floats.1 & 0x7FEF_FFFF_FFFF_FFFF)),
                letter,
                text: text.clone(),
                borrowed: &text,
                bytes: bytes.clone(),
                borrowed_bytes: &bytes,
                plain,
                shapes: vec![Shape::Unit, Shape::Newtype(words.0), Shape::Tuple(small.1, text.clone()), Shape::Struct { x: 1.5, y: maybe.map(|m| m.0 as i64) }],
                map,
                maybe: maybe.map(|(a, b)| Box::new((a, Shape::Newtype(b)))),
                unit: (),
            };
            let encoded = postcard::to_stdvec(&value).unwrap();
            let (decoded, rest) = take_from_bytes::<Everything<'_>>(&encoded).unwrap();
            prop_assert_eq!(&decoded, &value);
            prop_assert!(rest.is_empty());
            // Every truncation fails as postcard's does.
            for cut in 0..encoded.len() {
                same::<Everything<'_>>(&encoded[..cut])?;
            }
        }

        #[test]
        fn arbitrary_bytes_get_the_same_value_or_error_as_from_postcard(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            same::<(u16, i32, u64)>(&bytes)?;
            same::<(u128, i128)>(&bytes)?;
            same::<(bool, Option<u8>, char)>(&bytes)?;
            same::<(String, Vec<u8>)>(&bytes)?;
            same::<(&str, &[u8])>(&bytes)?;
            same::<Vec<Shape>>(&bytes)?;
            same::<BTreeMap<u8, u16>>(&bytes)?;
            // Floats by their bits, so that a NaN compares equal with itself.
            let bits = |r: Result<((f32, f64), &[u8])>| {
                r.map(|((a, b), rest)| (a.to_bits(), b.to_bits(), rest.len()))
            };
            prop_assert_eq!(
                bits(take_from_bytes::<(f32, f64)>(&bytes)),
                bits(postcard::take_from_bytes::<(f32, f64)>(&bytes))
            );
        }

        #[test]
        fn varints_at_every_width_decode_as_postcard_decodes_them(
            shift in 0u32..128,
            low in any::<u64>(),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let value = (u128::from(low) << shift.min(64)) >> (shift - shift.min(64));
            let mut encoded = postcard::to_stdvec(&(value, value as u64, value as u32, value as u16)).unwrap();
            encoded.extend_from_slice(&extra);
            same::<(u128, u64, u32, u16)>(&encoded)?;
            // The same bytes read as other widths: overlong and overflowing varints.
            same::<(u16, u16, u16, u16)>(&encoded)?;
            same::<(u32, u32, u32)>(&encoded)?;
            same::<(u64, u64)>(&encoded)?;
        }
    }
}
