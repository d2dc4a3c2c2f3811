//! Proto ↔ domain conversions. Input is validated and normalised here, once;
//! violations name the field path relative to the converted message.

pub mod action;
pub mod activity;
pub mod contact;
pub mod rules;

use chrono::{DateTime, Utc};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};

/// Earliest accepted timestamp (1900-01-01).
const MIN_SECONDS: i64 = -2_208_988_800;
/// Latest accepted timestamp (2200-01-01).
const MAX_SECONDS: i64 = 7_258_118_400;

/// A domain time as a proto timestamp.
pub fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// An optional domain time as a proto timestamp.
pub fn opt_ts(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(ts)
}

/// A proto timestamp as a domain time, between 1900 and 2200.
///
/// # Errors
/// A description of the range.
pub fn from_ts(t: &Timestamp) -> Result<DateTime<Utc>, String> {
    if !(MIN_SECONDS..MAX_SECONDS).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err("must be a valid time between 1900 and 2200".into());
    }
    DateTime::from_timestamp(t.seconds, t.nanos as u32).ok_or_else(|| "not a valid time".into())
}

/// A protobuf `Struct` as a JSON object that PostgreSQL's `jsonb` takes:
/// numbers must be finite (JSON has no NaN or infinity) and text must not
/// hold NUL characters.
///
/// # Errors
/// The path of the first offending value under the struct (such as `url` or
/// `items[2].price`), and what is wrong.
pub fn struct_to_json(
    s: &Struct,
) -> Result<serde_json::Map<String, serde_json::Value>, (String, String)> {
    s.fields
        .iter()
        .map(|(k, v)| {
            if k.contains('\0') {
                return Err((clip_key(k), "keys must not contain NUL characters".into()));
            }
            value_to_json(v)
                .map(|j| (k.clone(), j))
                .map_err(|(p, e)| (crate::error::join_path(&clip_key(k), &p), e))
        })
        .collect()
}

fn clip_key(k: &str) -> String {
    crate::error::clip(k, 64)
}

fn value_to_json(v: &Value) -> Result<serde_json::Value, (String, String)> {
    use serde_json::Value as J;
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::NumberValue(n)) => match serde_json::Number::from_f64(*n) {
            Some(n) => J::Number(n),
            None => return Err((String::new(), "numbers must be finite".into())),
        },
        Some(Kind::StringValue(s)) if s.contains('\0') => {
            return Err((String::new(), "text must not contain NUL characters".into()));
        }
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::StructValue(s)) => J::Object(struct_to_json(s)?),
        Some(Kind::ListValue(l)) => J::Array(
            l.values
                .iter()
                .enumerate()
                .map(|(i, x)| value_to_json(x).map_err(|(p, e)| (format!("[{i}]{p}"), e)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A JSON object as a protobuf `Struct`.
pub fn json_to_struct(m: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// A JSON value as a protobuf `Value`.
pub fn json_to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        J::Object(m) => Kind::StructValue(json_to_struct(m)),
    };
    Value { kind: Some(kind) }
}

/// Clamps a requested page size: 0 means `default`, at most `max`.
pub fn page_size(requested: i32, default: i64, max: i64) -> Result<i64, String> {
    match requested {
        0 => Ok(default),
        n if n < 0 => Err("must not be negative".into()),
        n => Ok(i64::from(n).min(max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_reject_out_of_range() {
        let t = Timestamp {
            seconds: 1_700_000_000,
            nanos: 5_000,
        };
        assert_eq!(ts(from_ts(&t).unwrap()), t);
        assert!(
            from_ts(&Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_err()
        );
        assert!(
            from_ts(&Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_err()
        );
    }

    #[test]
    fn jsonb_refuses_what_structs_can_hold() {
        let number = |n: f64| Value {
            kind: Some(Kind::NumberValue(n)),
        };
        let text = |t: &str| Value {
            kind: Some(Kind::StringValue(t.into())),
        };
        let with = |k: &str, v: Value| Struct {
            fields: [(k.to_string(), v)].into(),
        };
        assert_eq!(
            struct_to_json(&with("price", number(f64::NAN)))
                .unwrap_err()
                .0,
            "price"
        );
        assert!(struct_to_json(&with("p", number(f64::INFINITY))).is_err());
        assert_eq!(
            struct_to_json(&with("url", text("/a\0b"))).unwrap_err().0,
            "url"
        );
        assert!(struct_to_json(&with("a\0", text("x"))).is_err());
        let nested = with(
            "items",
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![text("ok"), number(f64::NEG_INFINITY)],
                })),
            },
        );
        assert_eq!(struct_to_json(&nested).unwrap_err().0, "items[1]");
    }

    #[test]
    fn structs_round_trip() {
        let j =
            serde_json::json!({"url": "/pricing", "n": 2.5, "tags": ["a", true], "o": {"x": null}});
        let m = j.as_object().unwrap();
        assert_eq!(struct_to_json(&json_to_struct(m)).unwrap(), *m);
    }
}
