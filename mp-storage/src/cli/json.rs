//! JSON text as the tool prints and reads it, never through `serde_json::Value` (which would
//! round a number too large for a double): the lines of an export, and indentation added to or
//! taken from stored JSON, token by token.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::RawScope;

/// One line of an export, as an import reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    name: String,
    #[serde(borrow)]
    value: &'a RawValue,
    #[serde(default)]
    schema: u32,
    #[serde(default)]
    expires_at: Option<u64>,
}

/// The line of an export for scope `name`: `{"name":…,"value":…,"schema":…,"expires_at":…}`,
/// the value as stored (its line breaks taken out), the expiry in ms since 1970 or `null`.
pub(super) fn export_line(name: &str, raw: &RawScope) -> String {
    let name = serde_json::to_string(name).unwrap_or_default();
    let value = if raw.json().contains(['\n', '\r']) {
        minify(raw.json())
    } else {
        raw.json().trim().to_owned()
    };
    let expires_at = raw
        .expires_at()
        .map_or_else(|| "null".to_owned(), |at| at.to_string());
    format!(
        "{{\"name\":{name},\"value\":{value},\"schema\":{},\"expires_at\":{expires_at}}}",
        raw.schema()
    )
}

/// Parses a line of an export: the scope's name and what to store, or why the line is bad.
pub(super) fn parse_line(line: &str, max_data_len: usize) -> Result<(String, RawScope), String> {
    let line: Line<'_> = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let reason = if line.name.is_empty() {
        "the name is empty"
    } else if line.name.len() > crate::MAX_NAME_LEN {
        "the name is longer than 1024 bytes"
    } else if line.name.contains('\0') {
        "the name holds a NUL byte"
    } else {
        ""
    };
    if !reason.is_empty() {
        return Err(format!("{reason}: {:?}", crate::error::shorten(&line.name)));
    }
    let value = line.value.get();
    if value.len() > max_data_len {
        return Err(format!(
            "the value of {:?} is {} bytes, over the store's limit of {max_data_len}",
            crate::error::shorten(&line.name),
            value.len()
        ));
    }
    let raw = RawScope::new(value, line.schema)
        .map_err(|e| e.to_string())?
        .with_expires_at(line.expires_at);
    Ok((line.name, raw))
}

/// Whether `c` is whitespace between JSON tokens.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// `json` without the whitespace between its tokens (strings kept as they are).
pub(super) fn minify(json: &str) -> String {
    reformat(json, None)
}

/// `json` indented by two spaces, as `serde_json::to_string_pretty` prints (numbers and
/// strings kept exactly as stored).
pub(super) fn pretty(json: &str) -> String {
    reformat(json, Some(2))
}

fn reformat(json: &str, indent: Option<usize>) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 2);
    let mut depth = 0usize;
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', depth * width));
        }
    };
    let mut chars = json.chars().peekable();
    let (mut in_string, mut escaped) = (false, false);
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            c if is_space(c) => {}
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.peek().copied().is_some_and(is_space) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(if indent.is_some() { ": " } else { ":" }),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_matches_serde_json_and_keeps_numbers() {
        for json in [
            r#"{"a":[1,2,{"b":null}],"c":{},"d":[],"e":"x, y: {z} \" [","f":-1.5}"#,
            r#"[]"#,
            r#""s""#,
            r#"{ "a" : [ ] , "b" : { } }"#,
            "{\n  \"k\": \"\\\\\"\n}",
        ] {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(
                pretty(json),
                serde_json::to_string_pretty(&v).unwrap(),
                "{json}"
            );
            assert_eq!(minify(json), serde_json::to_string(&v).unwrap(), "{json}");
        }
        assert_eq!(
            pretty("{\"n\":123456789012345678901234567890, \"f\": -1.5e3}"),
            "{\n  \"n\": 123456789012345678901234567890,\n  \"f\": -1.5e3\n}"
        );
    }

    #[test]
    fn lines_round_trip() {
        let raw = RawScope::new("{\"a\":\n 1}", 3)
            .unwrap()
            .with_expires_at(Some(42));
        let line = export_line("odd \"name\"\n/ ", &raw);
        assert_eq!(
            line,
            r#"{"name":"odd \"name\"\n/ ","value":{"a":1},"schema":3,"expires_at":42}"#
        );
        let (name, back) = parse_line(&line, 100).unwrap();
        assert_eq!(name, "odd \"name\"\n/ ");
        assert_eq!(
            (back.json(), back.schema(), back.expires_at()),
            ("{\"a\":1}", 3, Some(42))
        );
        let (_, plain) = parse_line(r#"{"name":"n","value":7}"#, 100).unwrap();
        assert_eq!(
            (plain.json(), plain.schema(), plain.expires_at()),
            ("7", 0, None)
        );
        for bad in [
            r#"{"name":"n"}"#,
            r#"{"name":"","value":1}"#,
            r#"{"name":"a\u0000b","value":1}"#,
            r#"{"name":"n","value":1,"other":2}"#,
            r#"{"name":"n","value":"long"}"#,
            r#"{"name":"n","value":1"#,
            "not json",
        ] {
            assert!(parse_line(bad, 5).is_err(), "{bad}");
        }
    }
}
