//! Storage URLs: which driver a URL picks, and the options in its query string.
//!
//! | URL | driver | options |
//! |---|---|---|
//! | `memory://` (or `memory:`) | in-process map | none |
//! | `file:<dir>`, `file:///abs/dir` | one file per scope | `fsync=true\|false` |
//! | `redis://[user:pass@]host:port/db` | Redis | `prefix=` (default `mp:`), `connect_timeout=` (default `2s`), `response_timeout=` (default `5s`), `protocol=` |
//! | `mysql://user[:pass]@host:port/db` | MySQL / MariaDB | `table=` (default `mp_scopes`) |

use std::sync::Arc;

use crate::driver::Driver;
use crate::error::redact_url;
use crate::Error;

/// The schemes this build takes, for error messages.
pub(crate) const KNOWN_SCHEMES: &str = "memory, file, redis, rediss, mysql";

/// The parts of a storage URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    /// The scheme, lower-cased.
    pub scheme: String,
    /// Everything after `scheme:` up to `?` (for `memory://`, the empty string after `//`).
    pub body: &'a str,
    /// Decoded `key=value` pairs of the query string.
    pub query: Vec<(String, String)>,
}

/// Splits `url` into scheme, body and query.
pub(crate) fn parse(url: &str) -> Result<Parsed<'_>, Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let Some(colon) = url.find(':') else {
        return Err(invalid(
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
        scheme: scheme.to_ascii_lowercase(),
        body,
        query,
    })
}

impl Parsed<'_> {
    /// Fails when the query holds a key not in `known`.
    pub(crate) fn only_options(&self, url: &str, known: &[&str]) -> Result<(), Error> {
        for (k, _) in &self.query {
            if !known.contains(&k.as_str()) {
                return Err(Error::InvalidUrl {
                    url: redact_url(url),
                    reason: format!(
                        "unknown option {k:?} for {} (known: {})",
                        self.scheme,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                });
            }
        }
        Ok(())
    }

    /// The last value given for option `key`.
    #[cfg_attr(
        not(any(feature = "file", feature = "redis", feature = "mysql")),
        allow(dead_code)
    )]
    pub(crate) fn option(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a boolean option value.
#[cfg_attr(not(feature = "file"), allow(dead_code))]
pub(crate) fn parse_bool(url: &str, key: &str, value: &str) -> Result<bool, Error> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::InvalidUrl {
            url: redact_url(url),
            reason: format!("option {key} must be true or false, not {value:?}"),
        }),
    }
}

/// Opens the driver a URL names.
pub(crate) async fn open_driver(url: &str) -> Result<Arc<dyn Driver>, Error> {
    let parsed = parse(url)?;
    match parsed.scheme.as_str() {
        "memory" => {
            parsed.only_options(url, &[])?;
            if !(parsed.body.is_empty() || parsed.body == "//") {
                return Err(Error::InvalidUrl {
                    url: redact_url(url),
                    reason: "memory takes no host or path: write memory://".to_owned(),
                });
            }
            Ok(Arc::new(crate::driver::memory::MemoryDriver::new()))
        }
        #[cfg(feature = "file")]
        "file" => Ok(Arc::new(
            crate::driver::file::open_parsed(url, &parsed).await?,
        )),
        #[cfg(not(feature = "file"))]
        "file" => Err(not_compiled(url, "file")),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(
            crate::driver::redis::open_parsed(url, &parsed).await?,
        )),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => Err(not_compiled(url, "redis")),
        #[cfg(feature = "mysql")]
        "mysql" => Ok(Arc::new(
            crate::driver::mysql::open_parsed(url, &parsed).await?,
        )),
        #[cfg(not(feature = "mysql"))]
        "mysql" => Err(not_compiled(url, "mysql")),
        other => Err(Error::UnknownScheme {
            scheme: other.to_owned(),
            url: redact_url(url),
            known: KNOWN_SCHEMES,
        }),
    }
}

#[cfg_attr(
    all(feature = "file", feature = "redis", feature = "mysql"),
    allow(dead_code)
)]
fn not_compiled(url: &str, feature: &str) -> Error {
    Error::InvalidUrl {
        url: redact_url(url),
        reason: format!(
            "the {feature} driver is not compiled in: enable the `{feature}` feature of mp-storage"
        ),
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

        let p = parse("memory://").unwrap();
        assert_eq!((p.scheme.as_str(), p.body), ("memory", "//"));
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(parse("no-scheme"), Err(Error::InvalidUrl { .. })));
        assert!(matches!(parse(":x"), Err(Error::InvalidUrl { .. })));
        assert!(matches!(parse("1x:y"), Err(Error::InvalidUrl { .. })));
        assert!(matches!(parse("a b:y"), Err(Error::InvalidUrl { .. })));
    }

    #[test]
    fn unknown_option_is_named() {
        let p = parse("memory://?x=1").unwrap();
        let e = p.only_options("memory://?x=1", &[]).unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
    }

    #[test]
    fn bools() {
        assert!(parse_bool("u", "k", "TRUE").unwrap());
        assert!(!parse_bool("u", "k", "0").unwrap());
        assert!(parse_bool("u", "k", "maybe").is_err());
    }

    #[tokio::test]
    async fn unknown_scheme_is_named() {
        match open_driver("postgres://localhost/db").await {
            Err(Error::UnknownScheme { scheme, .. }) => assert_eq!(scheme, "postgres"),
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("opened an unknown scheme"),
        }
        assert!(open_driver("memory://host").await.is_err());
        assert!(open_driver("memory://").await.is_ok());
        assert!(open_driver("memory:").await.is_ok());
    }
}
