//! What a type leaves out when it writes back stored JSON: the loss check.
//!
//! The engine runs it only on a stored record whose data is not byte for byte the encoding of
//! its decoded value (see `engine/schema.rs`), and only once per stored record and type. It
//! compares the two JSON documents structurally and lists every place where the stored one
//! holds data the re-encoding does not:
//!
//! - an object key present in the stored JSON and absent from the re-encoding, unless its value
//!   carries no data (`null`, `[]`, `{}`, or an object of such values) or moved: a key of the
//!   re-encoding that the stored object lacks holds it whole (a field renamed with
//!   `#[serde(alias = "old")]`);
//! - a leaf whose value changed (a string, a boolean, a number by value, or a value of another
//!   kind): an enum variant read through `#[serde(other)]` is one;
//! - array elements missing from the re-encoding, unless the array is the same elements in
//!   another order (a set).
//!
//! Extra data in the re-encoding (fields filled with defaults) is fine, object key order is
//! irrelevant and numbers compare by value (`1` equals `1.0`).

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// The most lost fields an error lists; the rest are counted.
pub(crate) const MAX_LISTED: usize = 20;

/// The places where stored data would be lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lost {
    /// The paths (like `items`, `a.b[2].c`, `$` for the whole value), at most [`MAX_LISTED`],
    /// in document order.
    pub fields: Vec<String>,
    /// How many more there are beyond those listed.
    pub more: usize,
}

/// The data of `stored` that `rewritten` (the encoding of the value decoded from it) does not
/// keep, or `None` when it keeps everything. JSON that does not parse counts as lost whole.
pub(crate) fn lost(stored: &[u8], rewritten: &[u8]) -> Option<Lost> {
    let (Ok(stored), Ok(rewritten)) = (
        serde_json::from_slice::<Value>(stored),
        serde_json::from_slice::<Value>(rewritten),
    ) else {
        return Some(Lost {
            fields: vec![render(&[])],
            more: 0,
        });
    };
    lost_values(&stored, &rewritten)
}

/// [`lost`] on parsed values.
pub(crate) fn lost_values(stored: &Value, rewritten: &Value) -> Option<Lost> {
    let mut walk = Walk::default();
    walk.value(stored, rewritten);
    if walk.lost.fields.is_empty() {
        None
    } else {
        Some(walk.lost)
    }
}

/// A step of a path.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Default)]
struct Walk<'a> {
    path: Vec<Seg<'a>>,
    lost: Lost,
}

impl<'a> Walk<'a> {
    fn report(&mut self) {
        if self.lost.fields.len() < MAX_LISTED {
            self.lost.fields.push(render(&self.path));
        } else {
            self.lost.more += 1;
        }
    }

    fn any(&self) -> usize {
        self.lost.fields.len() + self.lost.more
    }

    fn value(&mut self, stored: &'a Value, rewritten: &'a Value) {
        if !carries_data(stored) {
            return;
        }
        match (stored, rewritten) {
            (Value::Object(s), Value::Object(r)) => self.object(s, r),
            (Value::Array(s), Value::Array(r)) => self.array(s, r),
            (Value::Number(s), Value::Number(r)) => {
                if !numbers_equal(s, r) {
                    self.report();
                }
            }
            (s, r) => {
                if s != r {
                    self.report();
                }
            }
        }
    }

    fn object(&mut self, stored: &'a Map<String, Value>, rewritten: &'a Map<String, Value>) {
        // Keys of the re-encoding the stored object lacks, each able to take in one stored
        // field that moved there (a field renamed with `#[serde(alias = "old")]`).
        let mut new_keys: Option<Vec<&Value>> = None;
        for (key, s) in stored {
            self.path.push(Seg::Key(key));
            match rewritten.get(key) {
                Some(r) => self.value(s, r),
                None if carries_data(s) => {
                    let new = new_keys.get_or_insert_with(|| {
                        rewritten
                            .iter()
                            .filter(|(k, _)| !stored.contains_key(*k))
                            .map(|(_, v)| v)
                            .collect()
                    });
                    match new.iter().position(|r| lost_values(s, r).is_none()) {
                        Some(i) => {
                            new.swap_remove(i);
                        }
                        None => self.report(),
                    }
                }
                None => {}
            }
            self.path.pop();
        }
    }

    fn array(&mut self, stored: &'a [Value], rewritten: &'a [Value]) {
        // Element by element first; when that finds a loss, the same elements in another order
        // (a set, whose order is a hasher's) lose nothing.
        let mut positional = Walk {
            path: self.path.clone(),
            lost: Lost::default(),
        };
        for (i, s) in stored.iter().enumerate() {
            positional.path.push(Seg::Index(i));
            match rewritten.get(i) {
                Some(r) => positional.value(s, r),
                None => positional.report(),
            }
            positional.path.pop();
        }
        if positional.any() == 0 || same_elements(stored, rewritten) {
            return;
        }
        for field in positional.lost.fields {
            if self.lost.fields.len() < MAX_LISTED {
                self.lost.fields.push(field);
            } else {
                self.lost.more += 1;
            }
        }
        self.lost.more += positional.lost.more;
    }
}

/// Whether a stored value holds anything: `null`, `[]`, `{}` and objects of such values do not.
fn carries_data(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => m.values().any(carries_data),
        _ => true,
    }
}

/// Numbers by value: `1`, `1.0` and `1e0` are equal; integers exactly, others as doubles.
fn numbers_equal(a: &Number, b: &Number) -> bool {
    match (int_of(a), int_of(b)) {
        (Some(x), Some(y)) => x == y,
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// The integer a number holds, also when written as a float with no fraction.
fn int_of(n: &Number) -> Option<i128> {
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    let f = n.as_f64()?;
    // Beyond 2^63 a double is not exact anyway: compare those as doubles.
    if f.fract() == 0.0 && f.abs() < 9.2e18 {
        Some(f as i128)
    } else {
        None
    }
}

/// Whether the two arrays hold the same elements (each stored one matched by its own equal
/// rewritten one), in any order.
fn same_elements(stored: &[Value], rewritten: &[Value]) -> bool {
    if stored.len() > rewritten.len() {
        return false;
    }
    let mut s: Vec<String> = stored.iter().map(canonical).collect();
    let mut r: Vec<String> = rewritten.iter().map(canonical).collect();
    s.sort_unstable();
    r.sort_unstable();
    // Every stored element must find its equal; extra rewritten ones are fine.
    let mut j = 0;
    for x in &s {
        while j < r.len() && r[j] < *x {
            j += 1;
        }
        if j == r.len() || r[j] != *x {
            return false;
        }
        j += 1;
    }
    true
}

/// A text form of a value in which equal values (by the rules above, key order and number
/// spelling aside) are equal strings.
fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match int_of(n) {
            Some(i) => {
                let _ = write!(out, "{i}");
            }
            None => {
                let _ = write!(out, "{:?}", n.as_f64().unwrap_or(f64::NAN));
            }
        },
        Value::String(s) => {
            let _ = write!(out, "{s:?}");
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k:?}:");
                write_canonical(x, out);
            }
            out.push('}');
        }
    }
}

/// A path for a message: `items`, `owner.name`, `lines[2].qty`, `tags["a b"]`; `$` for the
/// whole value. Cut to 100 characters.
fn render(path: &[Seg]) -> String {
    if path.is_empty() {
        return "$".to_owned();
    }
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if is_plain(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Key(k) => {
                out.push('[');
                out.push_str(&Value::String((*k).to_owned()).to_string());
                out.push(']');
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    crate::error::shorten(&out)
}

/// Whether a key reads unambiguously after a dot.
fn is_plain(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(stored: Value, rewritten: Value) -> Vec<String> {
        lost_values(&stored, &rewritten)
            .map(|l| l.fields)
            .unwrap_or_default()
    }

    #[test]
    fn equal_documents_lose_nothing() {
        let v = json!({"a": 1, "b": [1, {"c": "x"}], "d": null});
        assert_eq!(lost_values(&v, &v), None);
        assert_eq!(lost(br#"{"a":1}"#, br#"{"a":1}"#), None);
    }

    #[test]
    fn a_renamed_field_is_lost() {
        assert_eq!(
            fields(json!({"items": {"apple": 2}}), json!({"lines": {}})),
            ["items"]
        );
    }

    #[test]
    fn a_value_moved_to_a_new_key_is_kept() {
        // `#[serde(alias = "items")] lines`: the data is under the new name.
        assert_eq!(
            fields(
                json!({"items": {"apple": 2}}),
                json!({"lines": {"apple": 2}})
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            fields(json!({"a": {"x": 1}}), json!({"b": {"x": 1.0, "y": 0}})),
            Vec::<String>::new()
        );
        // Only to a key the stored object lacks, and each new key takes in one field.
        assert_eq!(fields(json!({"a": 1, "b": 1}), json!({"b": 1})), ["a"]);
        assert_eq!(fields(json!({"a": 1, "b": 1}), json!({"c": 1})), ["b"]);
        assert_eq!(fields(json!({"a": 1}), json!({"c": 2})), ["a"]);
    }

    #[test]
    fn key_order_and_number_spelling_do_not_matter() {
        assert_eq!(
            fields(json!({"b": 1, "a": 2.5}), json!({"a": 2.5, "b": 1.0})),
            Vec::<String>::new()
        );
        assert_eq!(lost(br#"{"n":1e2}"#, br#"{"n":100}"#), None);
        assert_eq!(lost(br#"{"n":-3}"#, br#"{"n":-3.0}"#), None);
        assert_eq!(
            lost(
                br#"{"n":18446744073709551615}"#,
                br#"{"n":18446744073709551615}"#
            ),
            None
        );
        assert_eq!(fields(json!({"n": 1}), json!({"n": 2})), ["n"]);
        assert_eq!(
            fields(json!({"n": 0.1}), json!({"n": 0.10000000149011612})),
            ["n"]
        );
    }

    #[test]
    fn values_without_data_may_go() {
        assert_eq!(
            fields(
                json!({"a": null, "b": [], "c": {}, "d": {"e": null, "f": {}}, "k": 1}),
                json!({"k": 1})
            ),
            Vec::<String>::new()
        );
        // A stored null under a key the re-encoding fills in (an `Option` now `Some` default).
        assert_eq!(
            fields(json!({"a": null}), json!({"a": 0})),
            Vec::<String>::new()
        );
        // An empty string, a zero and `false` are data.
        assert_eq!(
            fields(json!({"s": "", "n": 0, "b": false}), json!({})),
            ["b", "n", "s"]
        );
    }

    #[test]
    fn defaults_added_by_the_reencoding_are_fine() {
        assert_eq!(
            fields(json!({"a": 1}), json!({"a": 1, "b": [], "c": "x"})),
            Vec::<String>::new()
        );
        assert_eq!(fields(json!([1]), json!([1, 2])), Vec::<String>::new());
    }

    #[test]
    fn nested_paths_are_named() {
        let stored = json!({
            "owner": {"name": "ann", "email": "a@x"},
            "lines": {"pear": {"qty": 1, "gift": true}, "fig": {"qty": 2}},
            "log": [{"at": 1, "by": "a"}, {"at": 2, "by": "b"}],
        });
        let rewritten = json!({
            "owner": {"name": "ann"},
            "lines": {"pear": {"qty": 1}, "fig": {"qty": 2}},
            "log": [{"at": 1}, {"at": 2}],
        });
        assert_eq!(
            fields(stored, rewritten),
            ["lines.pear.gift", "log[0].by", "log[1].by", "owner.email"]
        );
    }

    #[test]
    fn odd_keys_are_quoted() {
        assert_eq!(
            fields(json!({"a b": {"c.d": 1, "": 2}}), json!({"a b": {}})),
            [r#"["a b"][""]"#, r#"["a b"]["c.d"]"#]
        );
        assert_eq!(fields(json!({"名前": 1}), json!({})), ["名前"]);
    }

    #[test]
    fn changed_leaves_and_kinds_are_lost() {
        assert_eq!(fields(json!({"k": "Pear"}), json!({"k": "Other"})), ["k"]);
        assert_eq!(fields(json!({"k": {"x": 1}}), json!({"k": "x"})), ["k"]);
        assert_eq!(fields(json!({"k": [1]}), json!({"k": {}})), ["k"]);
        assert_eq!(fields(json!("a"), json!("b")), ["$"]);
        assert_eq!(fields(json!(true), json!(false)), ["$"]);
    }

    #[test]
    fn arrays_by_position_or_as_sets() {
        assert_eq!(fields(json!([1, 2, 3]), json!([1, 2])), ["[2]"]);
        assert_eq!(fields(json!({"t": [1, 5]}), json!({"t": [1, 6]})), ["t[1]"]);
        // A set written in another order by another process's hasher.
        assert_eq!(
            fields(
                json!({"t": ["b", "a", {"x": 1, "y": 2}]}),
                json!({"t": [{"y": 2, "x": 1.0}, "a", "b"]})
            ),
            Vec::<String>::new()
        );
        // The same multiset is needed: a duplicate does not stand for two.
        assert_eq!(
            fields(json!(["a", "a", "b"]), json!(["b", "a", "c"])),
            ["[0]", "[2]"]
        );
    }

    #[test]
    fn the_list_is_capped_and_the_rest_counted() {
        let stored: Map<String, Value> = (0..50).map(|i| (format!("f{i:02}"), json!(i))).collect();
        let l = lost_values(&Value::Object(stored), &json!({})).unwrap();
        assert_eq!(l.fields.len(), MAX_LISTED);
        assert_eq!(l.more, 30);
        assert_eq!(l.fields[0], "f00");
    }

    #[test]
    fn unparsable_json_is_lost_whole() {
        assert_eq!(lost(b"{", b"{}").unwrap().fields, ["$"]);
    }

    #[test]
    fn long_paths_are_cut() {
        let key = "k".repeat(500);
        let f = fields(json!({ key: 1 }), json!({}));
        assert_eq!(f[0].chars().count(), 101);
    }
}
