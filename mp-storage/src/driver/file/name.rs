//! Scope keys to file names and back.
//!
//! A key becomes the *stem* of its files (`<stem>.json` for the record, `<stem>.<random>.tmp`
//! while a write is in flight; its lock is one of the [`STRIPES`] lock files in [`LOCK_DIR`],
//! picked by a hash of the stem, see [`stripe_of`]):
//!
//! - The bytes `a`–`z`, `0`–`9`, `-`, `_` and `.` stand for themselves; every other byte of the
//!   key's UTF-8 is written `%` and two lower-case hex digits (`A` is `%41`, `/` is `%2f`, `%` is
//!   `%25`, `é` is `%c3%a9`). A stem therefore holds only lower-case ASCII: no separator, no
//!   upper case (two keys that differ only in case stay apart on case-insensitive file systems),
//!   no non-ASCII (no Unicode normalization by the file system either).
//! - A leading `.` is escaped (no hidden files, no `.` or `..`), and so is the first letter of a
//!   name that Windows reserves for devices (`con`, `nul`, `com1`, …).
//! - When that *plain* stem is longer than [`MAX_PLAIN_STEM`] bytes, the stem is instead the
//!   first bytes of the plain stem (at most [`HASHED_PREFIX`], for humans), `%h` and the
//!   SHA-256 of the key in hex. `%h` never occurs in a plain stem, so the two forms never
//!   collide; the full key is kept in the record's header, where `list` reads it.
//!
//! The longest file name is thus `MAX_PLAIN_STEM + 21` bytes (a temp file), well under the
//! 255-byte limit of common file systems.
//!
//! A several-scope commit writes one more file, its intent record `%commit.<id>.intent` (see
//! `journal.rs`). No stem starts with `%co` (`%` is always followed by two hex digits, or by
//! `h` in a hashed stem), and the name ends in none of the extensions of a key's files, so
//! nothing that looks for a key's files mistakes it for one.

use sha2::{Digest, Sha256};

/// The longest stem written in the plain, reversible form.
pub(crate) const MAX_PLAIN_STEM: usize = 200;

/// The most bytes of the plain stem a hashed stem starts with.
pub(crate) const HASHED_PREFIX: usize = 100;

/// The marker between the readable prefix and the hash of a hashed stem.
const HASH_MARK: &str = "%h";

/// The extension of record files.
pub(crate) const RECORD_EXT: &str = ".json";

/// The extension of lock files: the stripes, and the per-scope lock files `<stem>.lock` of
/// 0.1 directories.
pub(crate) const LOCK_EXT: &str = ".lock";

/// The extension of reservation files, `<stem>.res` in the lock directory (contract rule 13).
pub(crate) const RESERVATION_EXT: &str = ".res";

/// The subdirectory of the lock files. No stem starts with `%l`, so no key's files share its
/// name.
pub(crate) const LOCK_DIR: &str = "%locks";

/// How many lock files the scopes share. Fixed: every process on a directory must map a scope
/// to the same lock file.
pub(crate) const STRIPES: u16 = 256;

/// The lock stripe of `stem`: FNV-1a (64 bits) of its bytes, modulo [`STRIPES`]. Fixed for the
/// same reason as `STRIPES`; taken from the stem (not the key) so that a temp file's name
/// names its lock too.
pub(crate) fn stripe_of(stem: &str) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in stem.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The remainder is below STRIPES, so it fits.
    u16::try_from(h % u64::from(STRIPES)).unwrap_or(0)
}

/// The file name (in [`LOCK_DIR`]) of stripe `n`: `00.lock` to `ff.lock`.
pub(crate) fn stripe_file_name(n: u16) -> String {
    let mut out = String::with_capacity(2 + LOCK_EXT.len());
    // Below STRIPES (256): its low byte is all of it.
    let [_, low] = n.to_be_bytes();
    push_hex(&mut out, low);
    out.push_str(LOCK_EXT);
    out
}

/// The extension of temp files.
pub(crate) const TEMP_EXT: &str = ".tmp";

/// The start of an intent record's file name.
pub(crate) const INTENT_PREFIX: &str = "%commit.";

/// The extension of intent records.
pub(crate) const INTENT_EXT: &str = ".intent";

/// Names Windows gives to devices, whatever the extension.
const WINDOWS_DEVICES: &[&str] = &[
    "con", "prn", "aux", "nul", "conin$", "conout$", "com0", "com1", "com2", "com3", "com4",
    "com5", "com6", "com7", "com8", "com9", "lpt0", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6",
    "lpt7", "lpt8", "lpt9",
];

fn is_plain_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.')
}

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    push_hex(out, b);
}

/// Appends `b` as two lowercase hex digits.
fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// The reversible stem of `key`, however long.
fn plain_stem(key: &str) -> String {
    let bytes = key.as_bytes();
    // The part up to the first dot is what Windows compares with its device names.
    let base_len = bytes.iter().position(|&b| b == b'.').unwrap_or(bytes.len());
    let device = WINDOWS_DEVICES
        .iter()
        .any(|d| d.as_bytes() == &bytes[..base_len]);
    let mut out = String::with_capacity(bytes.len() + 8);
    for (i, &b) in bytes.iter().enumerate() {
        let escape = !is_plain_byte(b) || (i == 0 && (b == b'.' || device));
        if escape {
            push_escaped(&mut out, b);
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// The stem of the files of `key`.
pub(crate) fn stem(key: &str) -> String {
    let plain = plain_stem(key);
    if plain.len() <= MAX_PLAIN_STEM {
        return plain;
    }
    // Cut the readable prefix between escapes, never inside one.
    let mut cut = 0;
    let b = plain.as_bytes();
    while cut < b.len() {
        let step = if b[cut] == b'%' { 3 } else { 1 };
        if cut + step > HASHED_PREFIX {
            break;
        }
        cut += step;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(cut + HASH_MARK.len() + 64);
    out.push_str(&plain[..cut]);
    out.push_str(HASH_MARK);
    for byte in digest.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Whether `stem` is of the hashed form (its key is only in the file).
pub(crate) fn is_hashed(stem: &str) -> bool {
    stem.contains(HASH_MARK)
}

/// The key of a plain stem; `None` when `stem` is not exactly what [`stem`] gives for some key
/// (a hashed stem, or a file this driver did not name).
pub(crate) fn key_of_plain(stem: &str) -> Option<String> {
    let b = stem.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex_digit(*b.get(i + 1)?)?;
            let lo = hex_digit(*b.get(i + 2)?)?;
            bytes.push(hi << 4 | lo);
            i += 3;
        } else if is_plain_byte(b[i]) {
            bytes.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    let key = String::from_utf8(bytes).ok()?;
    // Only the canonical spelling names a key: `%61` for `a`, or a stem too long to be plain,
    // is someone else's file.
    (!key.is_empty() && self::stem(&key) == stem).then_some(key)
}

/// Whether `stem` is one [`stem`] gives for some key, plain or hashed.
pub(crate) fn is_stem(stem: &str) -> bool {
    match stem.split_once(HASH_MARK) {
        Some((prefix, hash)) => {
            hash.len() == 64
                && hash.bytes().all(|b| hex_digit(b).is_some())
                && prefix.len() <= HASHED_PREFIX
                && !prefix.is_empty()
                && !prefix.starts_with('.')
                && prefix.bytes().all(|b| is_plain_byte(b) || b == b'%')
        }
        None => key_of_plain(stem).is_some(),
    }
}

/// The name of the temp file of stem `stem` with the random part `id` (a several-scope
/// commit's id, or a single write's random number): `<stem>.<16 hex>.tmp`.
pub(crate) fn temp_file_name(stem: &str, id: u64) -> String {
    format!("{stem}.{id:016x}{TEMP_EXT}")
}

/// The stem and the random part of a temp file name this driver writes; `None` for any other
/// name (a user's `notes.tmp`).
pub(crate) fn temp_parts(file_name: &str) -> Option<(&str, u64)> {
    let (stem, id) = file_name.strip_suffix(TEMP_EXT)?.rsplit_once('.')?;
    Some((stem, parse_id(id)?)).filter(|(stem, _)| is_stem(stem))
}

/// The file name of the intent record of the commit `id`: `%commit.<16 hex>.intent`.
pub(crate) fn intent_file_name(id: u64) -> String {
    format!("{INTENT_PREFIX}{id:016x}{INTENT_EXT}")
}

/// The commit id of an intent record's file name; `None` for any other name.
pub(crate) fn intent_id(file_name: &str) -> Option<u64> {
    parse_id(
        file_name
            .strip_prefix(INTENT_PREFIX)?
            .strip_suffix(INTENT_EXT)?,
    )
}

/// Exactly 16 lower-case hex digits.
pub(crate) fn parse_id(hex: &str) -> Option<u64> {
    if hex.len() != 16 || !hex.bytes().all(|b| hex_digit(b).is_some()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_for_common_names() {
        assert_eq!(stem("global"), "global");
        assert_eq!(stem("user_1.settings"), "user_1.settings");
        assert_eq!(stem("user:alice"), "user%3aalice");
        assert_eq!(stem("Alice"), "%41lice");
        assert_eq!(stem("a b "), "a%20b%20");
        assert_eq!(stem("é"), "%c3%a9");
    }

    #[test]
    fn nothing_escapes_the_directory() {
        assert_eq!(stem(".."), "%2e.");
        assert_eq!(stem("."), "%2e");
        assert_eq!(stem(".hidden"), "%2ehidden");
        assert_eq!(stem("../x"), "%2e.%2fx");
        assert_eq!(stem("/abs"), "%2fabs");
        assert_eq!(stem("a\\b"), "a%5cb");
        assert_eq!(stem("%2e%2e"), "%252e%252e");
        assert_eq!(stem("a\0b"), "a%00b");
    }

    #[test]
    fn windows_devices_are_escaped() {
        assert_eq!(stem("con"), "%63on");
        assert_eq!(stem("nul.txt"), "%6eul.txt");
        assert_eq!(stem("console"), "console");
        assert_eq!(stem("CON"), "%43%4f%4e");
        for k in ["con", "nul.txt", "com1", "console"] {
            assert_eq!(key_of_plain(&stem(k)).as_deref(), Some(k));
        }
    }

    #[test]
    fn long_names_are_hashed() {
        let long = "é".repeat(500);
        let s = stem(&long);
        assert!(is_hashed(&s));
        assert!(s.len() <= HASHED_PREFIX + 2 + 64, "{}", s.len());
        assert!(s.starts_with("%c3%a9"));
        assert_eq!(key_of_plain(&s), None);
        assert_ne!(stem(&format!("{long}x")), s);
        // Exactly at the limit: still plain.
        let edge = "a".repeat(MAX_PLAIN_STEM);
        assert_eq!(stem(&edge), edge);
        assert!(is_hashed(&stem(&"a".repeat(MAX_PLAIN_STEM + 1))));
    }

    #[test]
    fn stems_are_recognized() {
        for k in ["a", "User", "é".repeat(400).as_str(), "..", "con"] {
            assert!(is_stem(&stem(k)), "{k}");
        }
        for s in [
            "A",
            "notes ",
            "%61",
            "",
            ".x",
            "x%hzz",
            "%h",
            &format!("%h{}", "0".repeat(64)),
        ] {
            assert!(!is_stem(s), "{s}");
        }
    }

    #[test]
    fn temp_and_intent_names() {
        let stem = stem("user:Alice");
        let temp = temp_file_name(&stem, 0x3f09_c1d2_a4b5_e6f7);
        assert_eq!(temp, "user%3a%41lice.3f09c1d2a4b5e6f7.tmp");
        assert_eq!(
            temp_parts(&temp),
            Some((stem.as_str(), 0x3f09_c1d2_a4b5_e6f7))
        );
        for other in [
            "notes.tmp",
            "User.0123456789abcdef.tmp",
            "k.0123456789ABCDEF.tmp",
            "k.0123456789abcde.tmp",
            "k.0123456789abcdef.json",
        ] {
            assert_eq!(temp_parts(other), None, "{other}");
        }
        let intent = intent_file_name(7);
        assert_eq!(intent, "%commit.0000000000000007.intent");
        assert_eq!(intent_id(&intent), Some(7));
        assert_eq!(intent_id("%commit.7.intent"), None);
        assert_eq!(intent_id("x%commit.0000000000000007.intent"), None);
        // No key's files share a name with an intent record.
        assert!(!is_stem("%commit.0000000000000007"));
        assert!(!is_stem("%commit"));
        assert_eq!(key_of_plain("%commit.0000000000000007.intent"), None);
    }

    #[test]
    fn stripes_are_fixed_and_spread() {
        // The mapping is part of the on-disk format: these must never change.
        assert_eq!(stripe_of(""), (0xcbf2_9ce4_8422_2325_u64 % 256) as u16);
        assert_eq!(stripe_of("global"), stripe_of(&stem("global")));
        let pinned: Vec<u16> = ["a", "global", "user%3aalice"]
            .iter()
            .map(|s| stripe_of(s))
            .collect();
        assert_eq!(pinned, vec![0x8c, 0xce, 0xd3]);
        assert_eq!(stripe_file_name(0), "00.lock");
        assert_eq!(stripe_file_name(255), "ff.lock");
        let mut counts = vec![0u32; usize::from(STRIPES)];
        for i in 0..25_600 {
            counts[usize::from(stripe_of(&stem(&format!("user:{i}"))))] += 1;
        }
        assert!(
            counts.iter().all(|&c| (50..=150).contains(&c)),
            "{counts:?}"
        );
        assert!(!is_stem(LOCK_DIR));
    }

    #[test]
    fn only_canonical_stems_decode() {
        assert_eq!(key_of_plain("user%3aalice").as_deref(), Some("user:alice"));
        assert_eq!(key_of_plain("%61"), None); // `a` is written plain
        assert_eq!(key_of_plain("A"), None);
        assert_eq!(key_of_plain("%4"), None);
        assert_eq!(key_of_plain("%zz"), None);
        assert_eq!(key_of_plain("%ff"), None); // not UTF-8
        assert_eq!(key_of_plain(""), None);
        assert_eq!(key_of_plain(".x"), None);
        assert_eq!(key_of_plain("con"), None);
    }
}
