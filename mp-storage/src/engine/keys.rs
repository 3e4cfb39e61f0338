//! Scope names and the driver keys they map to.

use std::borrow::Cow;

use crate::error::shorten;
use crate::Error;

/// The longest scope name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// The longest key a driver sees (key prefix + namespace + name), in bytes.
pub const MAX_KEY_LEN: usize = 2048;

/// The storage's key prefix, checked once.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// Checks a key prefix: no NUL, at most `MAX_KEY_LEN - MAX_NAME_LEN` bytes.
    pub(crate) fn new(prefix: String) -> Result<Keys, Error> {
        let reason = if prefix.contains('\0') {
            "the key prefix holds a NUL byte"
        } else if prefix.len() > MAX_KEY_LEN - MAX_NAME_LEN {
            "the key prefix is longer than 1024 bytes"
        } else {
            return Ok(Keys { prefix });
        };
        Err(Error::InvalidConfig {
            setting: "key_prefix",
            reason: format!("{reason}: {:?}", shorten(&prefix)),
        })
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The driver key of scope `name` of a type with `namespace`, after checking the name:
    /// `name` itself, borrowed, when there is neither a key prefix nor a namespace.
    pub(crate) fn key<'n>(&self, namespace: &str, name: &'n str) -> Result<Key<'n>, Error> {
        check_name(name)?;
        if self.prefix.is_empty() && namespace.is_empty() {
            return Ok(Key {
                key: Cow::Borrowed(name),
                prefix_len: 0,
            });
        }
        let mut key = String::with_capacity(self.prefix.len() + namespace.len() + name.len());
        key.push_str(&self.prefix);
        key.push_str(namespace);
        key.push_str(name);
        if key.len() > MAX_KEY_LEN {
            return Err(Error::InvalidName {
                name: shorten(&key[self.prefix.len()..]),
                reason: "the key (prefix, namespace and name) is longer than 2048 bytes",
            });
        }
        Ok(Key {
            key: Cow::Owned(key),
            prefix_len: self.prefix.len(),
        })
    }

    /// Checks a listing prefix and puts the key prefix before it.
    pub(crate) fn list_prefix(&self, prefix: &str) -> Result<String, Error> {
        let reason = if prefix.contains('\0') {
            "the prefix holds a NUL byte"
        } else if prefix.len() > MAX_NAME_LEN {
            "the prefix is longer than 1024 bytes"
        } else {
            return Ok(format!("{}{prefix}", self.prefix));
        };
        Err(Error::InvalidName {
            name: shorten(prefix),
            reason,
        })
    }
}

/// A driver key and the scope name inside it.
#[derive(Clone, Debug)]
pub(crate) struct Key<'n> {
    key: Cow<'n, str>,
    prefix_len: usize,
}

impl Key<'_> {
    /// The key the driver sees.
    pub(crate) fn as_str(&self) -> &str {
        &self.key
    }

    /// The scope's name as stored: namespace and name, without the storage's key prefix.
    pub(crate) fn scope(&self) -> &str {
        &self.key[self.prefix_len..]
    }
}

/// Checks a scope name: non-empty, no NUL, at most [`MAX_NAME_LEN`] bytes.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.len() > MAX_NAME_LEN {
        "the name is longer than 1024 bytes"
    } else if name.contains('\0') {
        "the name holds a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: shorten(name),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("a").is_ok());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a\0b").is_err());
        assert!(check_name("../..").is_ok());
    }

    #[test]
    fn keys_and_scopes() {
        let k = Keys::new("app/".into()).unwrap();
        let key = k.key("cart:", "alice").unwrap();
        assert_eq!(
            (key.as_str(), key.scope()),
            ("app/cart:alice", "cart:alice")
        );
        assert!(matches!(
            Keys::new("a\0".into()),
            Err(Error::InvalidConfig {
                setting: "key_prefix",
                ..
            })
        ));
        assert!(Keys::new("x".repeat(1025)).is_err());
        assert_eq!(k.list_prefix("u:").unwrap(), "app/u:");
        // No prefix, no namespace: the name as it is; either one: a key of its own.
        let bare = Keys::new(String::new()).unwrap();
        let key = bare.key("", "alice").unwrap();
        assert_eq!((key.as_str(), key.scope()), ("alice", "alice"));
        let key = bare.key("cart:", "alice").unwrap();
        assert_eq!((key.as_str(), key.scope()), ("cart:alice", "cart:alice"));
        assert!(bare.key("", "").is_err());
        assert!(bare.key("", &"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(k.list_prefix("a\0").is_err());
    }
}
