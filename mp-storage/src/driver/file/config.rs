//! The options of the file driver, in code ([`FileOptions`]) or from a `file:` URL (the forms
//! and options are in the [module docs](super)).

use std::path::PathBuf;
use std::time::Duration;

use crate::url::Parsed;
use crate::Error;

/// The URL options this driver reads.
const OPTIONS: &[&str] = &["fsync", "lock_timeout"];

/// Options of a [`FileDriver`](super::FileDriver): built in code, or read from a `file:` URL by
/// [`FileOptions::from_url`]. See the [module docs](super) for the URL forms and options.
#[derive(Clone, Debug)]
#[must_use]
pub struct FileOptions {
    pub(super) fsync: bool,
    pub(super) lock_timeout: Duration,
}

/// How long a write waits for a scope's lock by default: the default retry deadline.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            fsync: true,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

impl FileOptions {
    /// The defaults: durable writes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether every write is fsynced (the file, then the directory) before it counts as
    /// committed. Default `true`; `false` for tests and development. URL option `fsync`.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// The longest a write waits for the scope's lock (a several-scope commit, for all of its
    /// scopes' locks), held by another writer (another process stopped in the middle of a
    /// write, say); and a read, for a several-scope commit under way on its scope. After it the
    /// call fails with a [`Timeout`](crate::BackendKind::Timeout) error, having written
    /// nothing. Default
    /// [`DEFAULT_LOCK_TIMEOUT`] (30 s, the retry policy's default deadline); at least 1 ms.
    /// URL option `lock_timeout` (`500ms`, `2s`, `1.5`).
    pub fn lock_timeout(mut self, wait: Duration) -> Self {
        self.lock_timeout = wait.max(Duration::from_millis(1));
        self
    }

    /// The directory and the options a `file:` URL names, without touching the file system.
    ///
    /// ```
    /// use mp_storage::driver::file::{FileDriver, FileOptions};
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let (dir, options) = FileOptions::from_url("file:./mp-data?fsync=false")?;
    /// assert_eq!(dir, std::path::Path::new("./mp-data"));
    /// # let dir = std::env::temp_dir().join("mp-storage-doc-file-url");
    /// let driver = FileDriver::open(dir, options).await?;
    /// assert!(!driver.fsync());
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn from_url(url: &str) -> Result<(PathBuf, FileOptions), Error> {
        let parsed = crate::url::parse(url)?;
        parsed.expect_scheme("file", super::SCHEMES)?;
        parsed.only_options(OPTIONS)?;
        let mut options = FileOptions::new();
        if let Some(fsync) = parsed.bool_option("fsync")? {
            options = options.fsync(fsync);
        }
        if let Some(wait) = parsed.duration_option("lock_timeout")? {
            options = options.lock_timeout(wait);
        }
        Ok((dir_of(&parsed)?, options))
    }
}

/// The directory a `file:` URL body names.
fn dir_of(parsed: &Parsed<'_>) -> Result<PathBuf, Error> {
    let path = match parsed.body.strip_prefix("//") {
        Some(rest) => {
            let slash = rest.find('/').unwrap_or(rest.len());
            let host = &rest[..slash];
            if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
                return Err(parsed.invalid(format!(
                    "a file URL cannot name a host ({host:?}): write file:///abs/dir or file:./rel/dir"
                )));
            }
            &rest[slash..]
        }
        None => parsed.body,
    };
    if path.is_empty() {
        return Err(parsed.invalid("no directory: write file:./mp-data or file:///abs/dir"));
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| parsed.invalid("the path is not UTF-8 once percent-decoded"))?;
    if decoded.contains('\0') {
        return Err(parsed.invalid("the path holds a NUL byte"));
    }
    Ok(PathBuf::from(decoded.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(url: &str) -> Result<PathBuf, Error> {
        FileOptions::from_url(url).map(|(dir, _)| dir)
    }

    #[test]
    fn url_bodies() {
        let ok = |url: &str| dir(url).unwrap();
        assert_eq!(ok("file:./mp-data"), PathBuf::from("./mp-data"));
        assert_eq!(ok("file:rel"), PathBuf::from("rel"));
        assert_eq!(ok("file:/abs/dir"), PathBuf::from("/abs/dir"));
        assert_eq!(ok("file:///abs/dir"), PathBuf::from("/abs/dir"));
        assert_eq!(ok("file://localhost/abs"), PathBuf::from("/abs"));
        assert_eq!(ok("FILE://LocalHost/abs"), PathBuf::from("/abs"));
        assert_eq!(ok("file:/my%20dir"), PathBuf::from("/my dir"));
        assert_eq!(ok("file:/a%3Fb?fsync=0"), PathBuf::from("/a?b"));
        for bad in [
            "file:",
            "file://",
            "file://host/abs",
            "file://./x",
            "file:/a%00b",
            "file:/%ff",
        ] {
            assert!(
                matches!(dir(bad), Err(Error::InvalidUrl { .. })),
                "{bad:?} accepted"
            );
        }
        match dir("file://example.com/x") {
            Err(Error::InvalidUrl { reason, .. }) => assert!(reason.contains("host"), "{reason}"),
            other => panic!("a host was accepted: {other:?}"),
        }
    }

    #[test]
    fn url_options() {
        let fsync = |url: &str| FileOptions::from_url(url).map(|(_, o)| o.fsync);
        assert!(fsync("file:d").unwrap());
        assert!(!fsync("file:d?fsync=false").unwrap());
        assert!(fsync("file:d?fsync=off&fsync=ON").unwrap());
        for bad in [
            "file:d?fsync=maybe",
            "file:d?sync=false",
            "file:d?fsync=true&x=1",
            "memory:d",
            "redis://h/",
        ] {
            match fsync(bad) {
                Err(Error::InvalidUrl { .. }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn lock_timeouts() {
        let wait = |url: &str| FileOptions::from_url(url).map(|(_, o)| o.lock_timeout);
        assert_eq!(wait("file:d").unwrap(), DEFAULT_LOCK_TIMEOUT);
        assert_eq!(
            wait("file:d?lock_timeout=250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert!(wait("file:d?lock_timeout=0").is_err());
        assert!(wait("file:d?lock_timeout=soon").is_err());
    }

    #[test]
    fn options_in_code() {
        assert!(FileOptions::new().fsync);
        assert!(!FileOptions::new().fsync(false).fsync);
        assert!(FileOptions::default().fsync(false).fsync(true).fsync);
    }
}
