//! Small edits of server URLs, as the server tests make them: an option added, a database
//! swapped, the host pointed at a proxy.

/// Percent-encodes every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `url` with `extra` (`k=v&…`, already encoded) added to its query string.
pub fn with_query(url: &str, extra: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{extra}")
}

/// `url` with the query option `key=value` added (`value` as given, not encoded).
pub fn with_option(url: &str, key: &str, value: &str) -> String {
    with_query(url, &format!("{key}={value}"))
}

/// The Redis driver's option for a key prefix: `prefix=<encoded prefix>`.
pub fn prefix_query(prefix: &str) -> String {
    format!("prefix={}", encode(prefix))
}

/// `url` without its query string.
pub fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// `url` with its database (the path) replaced by `db`; the query is kept.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{db}", &base[..path]);
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The scheme's default port: Redis 6379, MySQL 3306, PostgreSQL 5432.
fn default_port(url: &str) -> Option<u16> {
    match url.split_once("://")?.0 {
        "redis" | "rediss" | "redis-cluster" => Some(6379),
        "mysql" => Some(3306),
        "postgres" | "postgresql" => Some(5432),
        _ => None,
    }
}

/// Where the host and port of `url` sit: the byte range after `scheme://` and `user@`, up to
/// the path or query.
fn host_range(url: &str) -> std::ops::Range<usize> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let start = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    start..end
}

/// The `host:port` of a `scheme://[user[:pass]@]host[:port]/…` URL, with the scheme's default
/// port when it names none.
pub fn host_port(url: &str) -> String {
    let hp = &url[host_range(url)];
    let has_port = hp.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    match default_port(url) {
        Some(port) if !has_port => format!("{hp}:{port}"),
        _ => hp.to_owned(),
    }
}

/// `url` pointing at `addr` (`host:port`, a proxy) instead of its own host and port.
pub fn via(url: &str, addr: &str) -> String {
    let range = host_range(url);
    format!("{}{addr}{}", &url[..range.start], &url[range.end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(host_port("redis://127.0.0.1:6380/0"), "127.0.0.1:6380");
        assert_eq!(host_port("redis://localhost/"), "localhost:6379");
        assert_eq!(host_port("redis://u:p@h:1/2?x=1"), "h:1");
        assert_eq!(host_port("mysql://root@127.0.0.1/test"), "127.0.0.1:3306");
        assert_eq!(host_port("mysql://a:b@c@db:3307?x"), "db:3307");
        assert_eq!(host_port("postgres://[::1]/db"), "[::1]:5432");
        assert_eq!(host_port("postgres://[::1]:5433/db"), "[::1]:5433");
    }

    #[test]
    fn via_replaces_host_and_port_only() {
        assert_eq!(
            via("redis://u:p@127.0.0.1:6379/1?prefix=a", "127.0.0.1:9"),
            "redis://u:p@127.0.0.1:9/1?prefix=a"
        );
        assert_eq!(
            via("mysql://root@localhost/test", "127.0.0.1:9"),
            "mysql://root@127.0.0.1:9/test"
        );
    }

    #[test]
    fn queries_and_databases() {
        assert_eq!(with_option("redis://h/", "a", "1"), "redis://h/?a=1");
        assert_eq!(
            with_option("redis://h/?a=1", "b", "2"),
            "redis://h/?a=1&b=2"
        );
        assert_eq!(prefix_query("a:b/é"), "prefix=a%3Ab%2F%C3%A9");
        assert_eq!(without_query("mysql://h/db?table=t"), "mysql://h/db");
        assert_eq!(
            with_db("mysql://r@h:1/test?x=1", "other"),
            "mysql://r@h:1/other?x=1"
        );
        assert_eq!(with_db("mysql://r@h:1", "other"), "mysql://r@h:1/other");
    }
}
