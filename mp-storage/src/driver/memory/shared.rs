//! Named stores: `memory://NAME`, shared within the process while some driver holds them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use super::Map;
use crate::url::Parsed;
use crate::Error;

/// The longest store name a URL takes.
const MAX_NAME_LEN: usize = 255;

/// Every named store of the process. Entries are weak: a store lives while a driver holds it.
static STORES: LazyLock<Mutex<HashMap<String, Weak<Map>>>> = LazyLock::new(Mutex::default);

/// The store named `name`: the live one, or a new empty one.
pub(super) fn store(name: &str) -> Arc<Map> {
    // Nothing panics while this lock is held, and every change is one insert or retain.
    let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(map) = stores.get(name).and_then(Weak::upgrade) {
        return map;
    }
    // Forget the names whose stores are gone, so the table stays as small as the live stores.
    stores.retain(|_, store| store.strong_count() > 0);
    let map = Arc::new(Map::default());
    stores.insert(name.to_owned(), Arc::downgrade(&map));
    map
}

/// The store name of a parsed `memory:` URL: `None` for `memory://` and `memory:`.
pub(super) fn name_in_url<'a>(parsed: &Parsed<'a>) -> Result<Option<&'a str>, Error> {
    let name = match parsed.body {
        "" | "//" => return Ok(None),
        body => body.strip_prefix("//").ok_or_else(|| {
            parsed.invalid("write memory:// for a store of its own, memory://NAME for a shared one")
        })?,
    };
    let valid = name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(parsed.invalid(format!(
            "a memory store name is 1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::memory::MemoryDriver;

    fn name(url: &str) -> Result<Option<String>, Error> {
        let parsed = crate::url::parse(url)?;
        name_in_url(&parsed).map(|n| n.map(str::to_owned))
    }

    #[test]
    fn urls_name_stores() {
        assert_eq!(name("memory://").unwrap(), None);
        assert_eq!(name("memory:").unwrap(), None);
        assert_eq!(name("memory://jobs").unwrap().as_deref(), Some("jobs"));
        assert_eq!(
            name("MEMORY://A-b_c.9").unwrap().as_deref(),
            Some("A-b_c.9")
        );
        let longest = format!("memory://{}", "n".repeat(MAX_NAME_LEN));
        assert!(name(&longest).unwrap().is_some());
        for bad in [
            "memory:jobs",
            "memory:/jobs",
            "memory://a/b",
            "memory://a b",
            "memory://é",
            "memory://a%20b",
            "memory:///",
        ] {
            assert!(matches!(name(bad), Err(Error::InvalidUrl { .. })), "{bad}");
        }
        let too_long = format!("memory://{}", "n".repeat(MAX_NAME_LEN + 1));
        assert!(matches!(name(&too_long), Err(Error::InvalidUrl { .. })));
    }

    #[tokio::test]
    async fn a_name_is_one_store_while_held() {
        use crate::driver::{Driver, Write};
        let write = Write::new(0, b"1", 1, 7);
        let name = format!("test-{:016x}", rand::random::<u64>());
        let a = MemoryDriver::named(&name);
        let b = MemoryDriver::named(&name);
        assert!(a.shares_store_with(&b));
        assert!(!a.shares_store_with(&MemoryDriver::named(&format!("{name}x"))));
        assert!(!MemoryDriver::new().shares_store_with(&MemoryDriver::new()));
        assert_eq!(a.store_name(), Some(name.as_str()));
        a.put("k", write).await.unwrap();
        assert_eq!(b.load("k").await.unwrap().map(|r| r.version), Some(7));
        let url = MemoryDriver::from_url(&format!("memory://{name}")).unwrap();
        assert!(url.shares_store_with(&a));
        drop((a, b, url));
        // The last holder is gone: so is the store, and the name starts over, empty.
        let c = MemoryDriver::named(&name);
        assert_eq!(c.load("k").await.unwrap(), None);
        let live = STORES.lock().unwrap().get(&name).map(Weak::strong_count);
        assert_eq!(live, Some(1));
    }
}
