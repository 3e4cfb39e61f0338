//! The counter server: an HTTP app that counts requests in mp-storage scopes.
//!
//! - `GET /` counts in scope [`GLOBAL_SCOPE`]; `GET /?user=NAME` counts in `user:NAME`
//!   ([`USER_PREFIX`]). Any user name is a scope of its own, taken exactly: `Alice`, `alice`,
//!   `../x` and `名前` are four names, and none of them is a path.
//! - The answer is text (`There have been 3 requests.`, `There has been 1 request.`), or JSON
//!   (`{"scope":"global","count":3}`) when the `Accept` header lists `application/json`.
//! - A user name that cannot be a scope name (a NUL byte, too long, not UTF-8) answers 400; a
//!   storage that fails answers 503 (500 for stored data that cannot be read): never a crash.
//!
//! Every count is one [`Storage::scoped`] call, so any number of server processes on one store
//! keep one exact count: each answered number is handed out once.
//!
//! `GET /events?user=NAME` (`GET /events` for the global count) streams the count as
//! Server-Sent Events: a `count` event with the count now, then one after each change, made by
//! any server process on the store (a burst may come as its last count only); an `error` event
//! when the storage fails, after which the stream goes on. It counts nothing itself.
//!
//! Beside the counts, users' wallets ([`wallet`]): `POST /deposit`, `GET /wallet`, and
//! `POST /transfer?from=A&to=B&amount=N`, which moves money between two wallets with one
//! [`Storage::try_scoped_many`] (both change or neither; an overdraft answers 409).

pub mod cli;
pub mod wallet;

use std::future::Future;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use mp_storage::{Error, ErrorCategory, Scope, Storage, MAX_NAME_LEN};
use percent_encoding::percent_decode_str;
use tokio::net::TcpListener;

/// The scope `GET /` counts in.
pub const GLOBAL_SCOPE: &str = "global";

/// The start of a user's scope name: `GET /?user=NAME` counts in `user:NAME`.
pub const USER_PREFIX: &str = "user:";

/// The longest user name, in bytes: a scope name is at most [`MAX_NAME_LEN`] bytes.
pub const MAX_USER_LEN: usize = MAX_NAME_LEN - USER_PREFIX.len();

/// What every scope of the server holds.
#[derive(Scope, serde::Serialize, serde::Deserialize, Default, Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// Requests counted so far.
    pub count: u64,
}

/// The JSON answer: `{"scope":"user:alice","count":2}`.
#[derive(serde::Serialize)]
struct Answer<'a> {
    scope: &'a str,
    count: u64,
}

/// The app: the router with its state (the storage every request counts in).
pub fn app(storage: Storage) -> Router {
    Router::new()
        .route("/", get(count))
        .route("/events", get(events))
        .route("/transfer", post(wallet::transfer))
        .route("/deposit", post(wallet::deposit))
        .route("/wallet", get(wallet::wallet))
        .fallback(not_found)
        .with_state(storage)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    storage: Storage,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Event streams never end by themselves: they end when the server stops, so that the
    // graceful shutdown does not wait for their clients.
    let (closing, closed) = tokio::sync::watch::channel(false);
    let app = app(storage).layer(axum::Extension(Closing(closed)));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = closing.send(true);
        })
        .await
}

/// Turns true when the server stops: ends the event streams.
#[derive(Clone)]
struct Closing(tokio::sync::watch::Receiver<bool>);

/// The text answer for a count: correct English for one and for many.
pub fn sentence(count: u64) -> String {
    if count == 1 {
        "There has been 1 request.".to_owned()
    } else {
        format!("There have been {count} requests.")
    }
}

/// The scope a request's query string counts in, or why it cannot count anywhere.
///
/// The query is form-encoded (`+` is a space, `%XX` a byte); the one parameter read is `user`.
/// No `user` means [`GLOBAL_SCOPE`]; `user=` (empty) is the user whose name is empty.
pub fn scope_for(query: Option<&str>) -> Result<String, &'static str> {
    let mut user = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(key).as_deref() != Ok("user") {
            continue;
        }
        if user.is_some() {
            return Err("give at most one user");
        }
        user = Some(form_decode(value).map_err(|()| "the user name is not valid UTF-8")?);
    }
    let Some(user) = user else {
        return Ok(GLOBAL_SCOPE.to_owned());
    };
    if user.contains('\0') {
        return Err("the user name holds a NUL byte");
    }
    if user.len() > MAX_USER_LEN {
        return Err("the user name is longer than 1019 bytes");
    }
    Ok(format!("{USER_PREFIX}{user}"))
}

/// Decodes one form-encoded component; `Err` when the bytes are not UTF-8.
fn form_decode(s: &str) -> Result<String, ()> {
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ())
}

/// Whether the `Accept` header lists `application/json`.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| item.split(';').next())
        .any(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// `GET /events?user=NAME`: the count of the scope as Server-Sent Events (see the module docs).
async fn events(
    State(storage): State<Storage>,
    closing: Option<axum::Extension<Closing>>,
    uri: Uri,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let scope = match scope_for(uri.query()) {
        Ok(scope) => scope,
        Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let changes = match storage.watch::<Counter>(&scope).await {
        Ok(changes) => changes,
        Err(e) => return failure(&scope, &e),
    };
    let events = changes.map(move |item| {
        Ok::<_, std::convert::Infallible>(match item {
            Ok(value) => Event::default()
                .event("count")
                .data(value.map_or(0, |c| c.count).to_string()),
            Err(e) => {
                tracing::warn!(scope = ?scope, error = %e, "watching failed");
                // One line: an event's data cannot hold a line break.
                let line = e.to_string().replace(['\r', '\n'], " ");
                Event::default().event("error").data(line)
            }
        })
    });
    let closed = async move {
        match closing {
            Some(axum::Extension(Closing(mut rx))) => {
                let _ = rx.wait_for(|closing| *closing).await;
            }
            None => std::future::pending().await,
        }
    };
    Sse::new(events.take_until(closed))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn count(State(storage): State<Storage>, uri: Uri, headers: HeaderMap) -> Response {
    let scope = match scope_for(uri.query()) {
        Ok(scope) => scope,
        Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let add = |c: &mut Counter| {
        c.count += 1;
        c.count
    };
    // A client that sends an `Idempotency-Key` and retries with it is counted once.
    let counted = match headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::trim))
    {
        None => storage.scoped(&scope, add).await,
        Some(Ok(key)) if !key.is_empty() => storage.idempotent(key).scoped(&scope, add).await,
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "the Idempotency-Key header must be non-empty visible ASCII\n".to_owned(),
            )
        }
    };
    match counted {
        Ok(n) => {
            tracing::debug!(scope = ?scope, count = n, "counted");
            let mut answer = if wants_json(&headers) {
                let body = Answer {
                    scope: &scope,
                    count: n,
                };
                match serde_json::to_string(&body) {
                    Ok(body) => (
                        [(header::CONTENT_TYPE, "application/json")],
                        format!("{body}\n"),
                    )
                        .into_response(),
                    Err(_) => text(StatusCode::OK, format!("{}\n", sentence(n))),
                }
            } else {
                text(StatusCode::OK, format!("{}\n", sentence(n)))
            };
            answer
                .headers_mut()
                .insert(header::VARY, HeaderValue::from_static("accept"));
            answer
        }
        Err(e) => failure(&scope, &e),
    }
}

/// The answer for a failed count, by the error's category: 400 for a name the storage refuses,
/// 500 for stored data that cannot be read, 503 with `Retry-After` when calling again is safe
/// (contention, a storage that is down or slow), and 500 without it when the count may have been
/// taken: a client that retried would count twice.
fn failure(scope: &str, e: &Error) -> Response {
    match e.category() {
        ErrorCategory::BadInput => {
            let reason = match e {
                Error::InvalidName { reason, .. } => reason.to_string(),
                other => other.to_string(),
            };
            text(
                StatusCode::BAD_REQUEST,
                format!("invalid user name: {reason}\n"),
            )
        }
        ErrorCategory::StoredData => {
            tracing::error!(scope = ?scope, error = %e, "the stored count cannot be used");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the stored count cannot be read\n".to_owned(),
            )
        }
        ErrorCategory::MayHaveHappened => {
            tracing::error!(scope = ?scope, error = %e, "the count may or may not have been taken");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the storage lost its answer: this request may have been counted; \
                 do not repeat it blindly\n"
                    .to_owned(),
            )
        }
        _ => {
            tracing::warn!(scope = ?scope, error = %e, "storage error");
            let mut answer = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, try again later\n".to_owned(),
            );
            if e.is_retryable() {
                answer
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            answer
        }
    }
}

async fn not_found() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "not found: try GET / or GET /?user=NAME, GET /events?user=NAME, GET /wallet?user=NAME, \
         POST /deposit?user=NAME&amount=N or POST /transfer?from=A&to=B&amount=N\n"
            .to_owned(),
    )
}

fn text(status: StatusCode, body: String) -> Response {
    (status, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences() {
        assert_eq!(sentence(1), "There has been 1 request.");
        assert_eq!(sentence(2), "There have been 2 requests.");
        assert_eq!(sentence(0), "There have been 0 requests.");
    }

    #[test]
    fn scopes() {
        assert_eq!(scope_for(None).as_deref(), Ok("global"));
        assert_eq!(scope_for(Some("")).as_deref(), Ok("global"));
        assert_eq!(scope_for(Some("x=1&&y")).as_deref(), Ok("global"));
        assert_eq!(scope_for(Some("user=alice")).as_deref(), Ok("user:alice"));
        assert_eq!(scope_for(Some("user=")).as_deref(), Ok("user:"));
        assert_eq!(scope_for(Some("user")).as_deref(), Ok("user:"));
        assert_eq!(
            scope_for(Some("us%65r=a+b%20c")).as_deref(),
            Ok("user:a b c")
        );
        assert_eq!(
            scope_for(Some("user=..%2F..%2Fetc%2Fpasswd")).as_deref(),
            Ok("user:../../etc/passwd")
        );
        assert_eq!(
            scope_for(Some("user=%E5%90%8D%E5%89%8D")).as_deref(),
            Ok("user:名前")
        );
        assert_eq!(scope_for(Some("user=%2B")).as_deref(), Ok("user:+"));
        assert!(scope_for(Some("user=a&user=b")).is_err());
        assert!(scope_for(Some("user=%00")).is_err());
        assert!(scope_for(Some("user=%FF")).is_err());
        assert_eq!(MAX_USER_LEN, 1019, "the message says 1019");
        let longest = "x".repeat(MAX_USER_LEN);
        assert!(scope_for(Some(&format!("user={longest}"))).is_ok());
        assert!(scope_for(Some(&format!("user={longest}x"))).is_err());
    }

    #[test]
    fn accept() {
        let mut h = HeaderMap::new();
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/plain"));
        assert!(!wants_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, Application/JSON; q=0.9"),
        );
        assert!(wants_json(&h));
    }

    /// Only errors after which nothing happened invite a retry; a lost answer never does.
    #[test]
    fn failures_say_whether_to_retry() {
        use std::time::Duration;
        let retry_after = |r: &Response| r.headers().contains_key(header::RETRY_AFTER);
        let lost = Error::CommitUnknown {
            scope: "global".into(),
            reason: "the reply was lost".into(),
        };
        let r = failure("global", &lost);
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!retry_after(&r));
        let busy = Error::Conflict {
            scope: "global".into(),
            attempts: 100,
            elapsed: Duration::from_secs(30),
        };
        let r = failure("global", &busy);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(retry_after(&r));
        let down = Error::backend_unsent("redis", mp_storage::BackendKind::Connection, "refused");
        let r = failure("global", &down);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(retry_after(&r));
        let full = Error::backend("file", mp_storage::BackendKind::Full, "disk full");
        let r = failure("global", &full);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!retry_after(&r));
        let bad = Error::InvalidName {
            name: "".into(),
            reason: "the name is empty",
        };
        assert_eq!(failure("", &bad).status(), StatusCode::BAD_REQUEST);
    }
}
