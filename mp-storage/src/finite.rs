//! A serializer that only walks a value to find floats JSON cannot hold (NaN, ±infinity), which
//! serde_json would otherwise write as `null` and so lose silently.

use std::fmt;

use serde::ser::{self, Serialize};

/// The error [`check`] reports: the first non-finite float met.
#[derive(Debug)]
pub(crate) struct NonFinite(String);

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NonFinite {}

impl ser::Error for NonFinite {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NonFinite(msg.to_string())
    }
}

/// Fails when `value` holds a NaN or infinite float.
pub(crate) fn check<T: Serialize + ?Sized>(value: &T) -> Result<(), NonFinite> {
    value.serialize(Check)
}

struct Check;

fn float(v: f64) -> Result<(), NonFinite> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(NonFinite(format!(
            "the float {v} cannot be stored as JSON (it would read back as null)"
        )))
    }
}

macro_rules! ok_scalars {
    ($($method:ident: $t:ty),* $(,)?) => {
        $( fn $method(self, _: $t) -> Result<(), NonFinite> { Ok(()) } )*
    };
}

impl ser::Serializer for Check {
    type Ok = ();
    type Error = NonFinite;
    type SerializeSeq = Check;
    type SerializeTuple = Check;
    type SerializeTupleStruct = Check;
    type SerializeTupleVariant = Check;
    type SerializeMap = Check;
    type SerializeStruct = Check;
    type SerializeStructVariant = Check;

    ok_scalars!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_char: char,
        serialize_str: &str, serialize_bytes: &[u8], serialize_unit_struct: &'static str,
    );

    fn serialize_f32(self, v: f32) -> Result<(), NonFinite> {
        float(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), NonFinite> {
        float(v)
    }
    fn serialize_none(self) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), NonFinite> {
        v.serialize(Check)
    }
    fn serialize_unit(self) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), NonFinite> {
        v.serialize(Check)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), NonFinite> {
        v.serialize(Check)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Check, NonFinite> {
        Ok(Check)
    }
    fn serialize_tuple(self, _: usize) -> Result<Check, NonFinite> {
        Ok(Check)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Check, NonFinite> {
        Ok(Check)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Check, NonFinite> {
        Ok(Check)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Check, NonFinite> {
        Ok(Check)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Check, NonFinite> {
        Ok(Check)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Check, NonFinite> {
        Ok(Check)
    }
}

macro_rules! compound {
    ($($tr:ident :: $method:ident),* $(,)?) => {
        $(
            impl ser::$tr for Check {
                type Ok = ();
                type Error = NonFinite;
                fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NonFinite> {
                    v.serialize(Check)
                }
                fn end(self) -> Result<(), NonFinite> {
                    Ok(())
                }
            }
        )*
    };
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for Check {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), NonFinite> {
        k.serialize(Check)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NonFinite> {
        v.serialize(Check)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

/// The two struct forms, whose fields carry a name the walk does not need.
macro_rules! named_fields {
    ($($tr:ident),* $(,)?) => {
        $(
            impl ser::$tr for Check {
                type Ok = ();
                type Error = NonFinite;
                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    _: &'static str,
                    v: &T,
                ) -> Result<(), NonFinite> {
                    v.serialize(Check)
                }
                fn end(self) -> Result<(), NonFinite> {
                    Ok(())
                }
            }
        )*
    };
}

named_fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(serde::Serialize)]
    struct Deep {
        a: Vec<Option<f64>>,
        b: BTreeMap<String, (u8, f32)>,
        c: E,
    }

    #[derive(serde::Serialize)]
    enum E {
        V { x: f64 },
    }

    #[test]
    fn finds_non_finite_floats_anywhere() {
        assert!(check(&1.5f64).is_ok());
        assert!(check(&f64::NAN).is_err());
        assert!(check(&f32::INFINITY).is_err());
        assert!(check(&vec![Some(1.0), None, Some(f64::NEG_INFINITY)]).is_err());
        let ok = Deep {
            a: vec![Some(1.0), None],
            b: BTreeMap::from([("k".into(), (1, 2.0))]),
            c: E::V { x: 0.0 },
        };
        assert!(check(&ok).is_ok());
        let bad = Deep {
            c: E::V { x: f64::NAN },
            ..ok
        };
        assert!(check(&bad).is_err());
        let bad = Deep {
            a: vec![],
            b: BTreeMap::from([("k".into(), (1, f32::NAN))]),
            c: E::V { x: 0.0 },
        };
        assert!(check(&bad).is_err());
    }
}
