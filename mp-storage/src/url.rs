//! Storage URLs, split into their parts: the scheme, the body and the decoded query options,
//! with helpers for reading options.
//!
//! This module knows no driver. Which driver a scheme picks is the table in
//! [`crate::driver::registry`]; each driver reads its own options into its own config type and
//! names the options it does not know with [`Parsed::only_options`].

use std::time::Duration;

use crate::error::redact_url;
use crate::Error;

/// The longest duration an option takes: one day.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// The parts of a storage URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    /// The URL as given, for errors (shown through [`redact_url`]).
    pub url: &'a str,
    /// The scheme, lower-cased.
    pub scheme: String,
    /// Everything after `scheme:` up to `?` (for `memory://`, the `//`).
    pub body: &'a str,
    /// Decoded `key=value` pairs of the query string, in order.
    pub query: Vec<(String, String)>,
}

/// Splits `url` into scheme, body and query. Fails only when there is no valid scheme.
pub(crate) fn parse(url: &str) -> Result<Parsed<'_>, Error> {
    let Some(colon) = url.find(':') else {
        return Err(invalid(
            url,
            "no scheme: expected memory://, file:<dir>, redis://… or mysql://…",
        ));
    };
    let scheme = &url[..colon];
    let valid_scheme = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return Err(invalid(
            url,
            "the scheme must be letters, digits, '+', '-' or '.'",
        ));
    }
    let rest = &url[colon + 1..];
    let (body, query) = match rest.find('?') {
        Some(q) => (&rest[..q], &rest[q + 1..]),
        None => (rest, ""),
    };
    let query = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Ok(Parsed {
        url,
        scheme: scheme.to_ascii_lowercase(),
        body,
        query,
    })
}

/// An [`Error::InvalidUrl`] for `url` (its password hidden).
pub(crate) fn invalid(url: &str, reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        url: redact_url(url),
        reason: reason.into(),
    }
}

impl Parsed<'_> {
    /// An [`Error::InvalidUrl`] for this URL.
    pub(crate) fn invalid(&self, reason: impl Into<String>) -> Error {
        invalid(self.url, reason)
    }

    /// Fails unless the scheme is one of `schemes`, the ones driver `driver` takes.
    pub(crate) fn expect_scheme(&self, driver: &str, schemes: &[&str]) -> Result<(), Error> {
        if schemes.contains(&self.scheme.as_str()) {
            return Ok(());
        }
        let list: Vec<String> = schemes.iter().map(|s| format!("{s}:")).collect();
        Err(self.invalid(format!(
            "the {driver} driver takes {} URLs, not {}:",
            list.join(" or "),
            self.scheme
        )))
    }

    /// Fails when the query holds a key not in `known`, naming it and the known ones.
    pub(crate) fn only_options(&self, known: &[&str]) -> Result<(), Error> {
        match self
            .query
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) => Err(self.invalid(format!(
                "unknown option {k:?} for {} (known: {})",
                self.scheme,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }

    /// The last value given for option `key`.
    #[cfg_attr(
        not(any(
            feature = "file",
            feature = "redis",
            feature = "mysql",
            feature = "postgres",
            feature = "sqlite"
        )),
        allow(dead_code)
    )]
    pub(crate) fn option(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Option `key` as a boolean (`true`, `false`, `1`, `0`, `yes`, `no`, `on`, `off`).
    #[cfg_attr(not(any(feature = "file", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn bool_option(&self, key: &str) -> Result<Option<bool>, Error> {
        self.option(key)
            .map(|v| {
                parse_bool(v).ok_or_else(|| {
                    self.invalid(format!("option {key} must be true or false, not {v:?}"))
                })
            })
            .transpose()
    }

    /// Option `key` as a duration (see [`parse_duration`]).
    #[cfg_attr(not(any(feature = "redis", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn duration_option(&self, key: &str) -> Result<Option<Duration>, Error> {
        self.option(key)
            .map(|v| {
                parse_duration(v).ok_or_else(|| {
                    self.invalid(format!(
                        "option {key} must be a positive duration such as 500ms, 2s or 1.5, \
                         not {v:?}"
                    ))
                })
            })
            .transpose()
    }
}

/// Parses a boolean option value, in any case: `1`, `true`, `yes`, `on` or `0`, `false`, `no`,
/// `off`.
#[cfg_attr(not(any(feature = "file", feature = "sqlite")), allow(dead_code))]
pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parses a positive duration of at most a day: `500ms`, `2s`, or a number of seconds (`1.5`).
#[cfg_attr(not(any(feature = "redis", feature = "sqlite")), allow(dead_code))]
pub(crate) fn parse_duration(value: &str) -> Option<Duration> {
    let v = value.trim();
    let (number, scale) = if let Some(ms) = v.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = v.strip_suffix('s') {
        (s, 1.0)
    } else {
        (v, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * scale <= MAX_DURATION.as_secs_f64() => {
            Some(Duration::from_secs_f64(n * scale))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_scheme_body_query() {
        let p = parse("file:./mp-data?fsync=false").unwrap();
        assert_eq!(p.scheme, "file");
        assert_eq!(p.body, "./mp-data");
        assert_eq!(p.option("fsync"), Some("false"));

        let p = parse("REDIS://h:1/2?prefix=a%3Ab&prefix=c").unwrap();
        assert_eq!(p.scheme, "redis");
        assert_eq!(p.body, "//h:1/2");
        assert_eq!(p.option("prefix"), Some("c"));
        assert_eq!(
            p.query,
            vec![
                ("prefix".to_owned(), "a:b".to_owned()),
                ("prefix".to_owned(), "c".to_owned())
            ]
        );

        let p = parse("memory://").unwrap();
        assert_eq!((p.scheme.as_str(), p.body), ("memory", "//"));
        let p = parse("memory:").unwrap();
        assert_eq!((p.scheme.as_str(), p.body), ("memory", ""));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["no-scheme", ":x", "1x:y", "a b:y", ""] {
            assert!(matches!(parse(bad), Err(Error::InvalidUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn unknown_option_is_named() {
        let p = parse("memory://?x=1").unwrap();
        let e = p.only_options(&[]).unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
        assert!(e.to_string().contains("known: none"), "{e}");
        let p = parse("file:d?fsync=1&sync=0").unwrap();
        let e = p.only_options(&["fsync"]).unwrap_err();
        assert!(e.to_string().contains("\"sync\""), "{e}");
        assert!(e.to_string().contains("known: fsync"), "{e}");
        assert!(p.only_options(&["fsync", "sync"]).is_ok());
    }

    #[test]
    fn errors_hide_the_password() {
        let p = parse("redis://u:hunter2@h/?x=1").unwrap();
        let e = p.only_options(&[]).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}");
    }

    #[test]
    fn schemes_are_checked() {
        let p = parse("Redis://h").unwrap();
        assert!(p.expect_scheme("redis", &["redis", "rediss"]).is_ok());
        let e = p.expect_scheme("mysql", &["mysql"]).unwrap_err();
        assert!(
            e.to_string().contains("the mysql driver takes mysql: URLs"),
            "{e}"
        );
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("TRUE"), Some(true));
        assert_eq!(parse_bool("on"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
        let p = parse("file:d?fsync=maybe&a=no").unwrap();
        assert!(matches!(
            p.bool_option("fsync"),
            Err(Error::InvalidUrl { .. })
        ));
        assert_eq!(p.bool_option("a").unwrap(), Some(false));
        assert_eq!(p.bool_option("absent").unwrap(), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 3 s "), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("86400"), Some(MAX_DURATION));
        for bad in ["", "0", "-1", "x", "nan", "inf", "1e9", "86401", "5m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let p = parse("redis://h/?t=soon").unwrap();
        let e = p.duration_option("t").unwrap_err();
        assert!(e.to_string().contains("option t must be"), "{e}");
    }
}
