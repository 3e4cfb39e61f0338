//! Wallets: money moved between two users' scopes, all or nothing.
//!
//! - `POST /deposit?user=NAME&amount=N` adds `N` to `wallet:NAME`.
//! - `POST /transfer?from=A&to=B&amount=N` moves `N` from `wallet:A` to `wallet:B` with one
//!   [`Storage::try_scoped_many`]: both balances change or neither does, and a transfer that
//!   would overdraw `A` is refused with 409 and changes nothing.
//! - `GET /wallet?user=NAME` reads a balance (0 for a wallet never written).
//!
//! Parameters come from the query string or a form-encoded body; amounts are whole positive
//! numbers. Answers are JSON: `{"user":"alice","balance":90}`, and for a transfer
//! `{"from":{…},"to":{…}}`. Bad parameters answer 400; storage failures as the counter's do.

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use mp_storage::{Error, Scope, Storage};

use super::{failure, form_decode, text};

/// The start of a wallet's scope name: user `alice`'s wallet is `wallet:alice`.
pub const WALLET_PREFIX: &str = "wallet:";

/// What a wallet scope holds.
#[derive(Scope, serde::Serialize, serde::Deserialize, Default, Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    /// The balance, in whole units.
    pub balance: u64,
}

/// The scope name of `user`'s wallet.
pub fn wallet_scope(user: &str) -> String {
    format!("{WALLET_PREFIX}{user}")
}

/// Why a transfer or deposit did not happen.
#[derive(Debug)]
pub enum WalletError {
    /// The payer's balance is below the amount.
    Insufficient {
        /// The payer's balance.
        balance: u64,
    },
    /// The payee's balance would pass `u64::MAX`.
    Overflow,
    /// The storage failed.
    Storage(Error),
}

impl From<Error> for WalletError {
    fn from(e: Error) -> Self {
        WalletError::Storage(e)
    }
}

/// Moves `amount` from `values[0]` to `values[1]`: the transfer's closure. Refuses an overdraft
/// and an overflow, changing nothing. Returns the two new balances.
pub fn move_money(values: &mut [Wallet], amount: u64) -> Result<(u64, u64), WalletError> {
    let [from, to] = values else {
        unreachable!("a transfer is over two wallets");
    };
    if from.balance < amount {
        return Err(WalletError::Insufficient {
            balance: from.balance,
        });
    }
    to.balance = to
        .balance
        .checked_add(amount)
        .ok_or(WalletError::Overflow)?;
    from.balance -= amount;
    Ok((from.balance, to.balance))
}

/// The parameters of a request: the query string's and a form body's, each name at most once.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>, body: &str) -> Result<Params, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in query
            .unwrap_or("")
            .split('&')
            .chain(body.trim_end().split('&'))
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |_| "a parameter is not valid UTF-8".to_owned();
            let (k, v) = (form_decode(k).map_err(bad)?, form_decode(v).map_err(bad)?);
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(format!("give {k} once"));
            }
            out.push((k, v));
        }
        Ok(Params(out))
    }

    fn get(&self, name: &str) -> Result<&str, String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("{name} is missing"))
    }

    fn amount(&self) -> Result<u64, String> {
        match self.get("amount")?.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("amount must be a whole number above 0".to_owned()),
        }
    }
}

#[derive(serde::Serialize)]
struct Balance<'a> {
    user: &'a str,
    balance: u64,
}

fn json(body: &impl serde::Serialize) -> Response {
    match serde_json::to_string(body) {
        Ok(body) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!("{body}\n"),
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn bad_request(why: String) -> Response {
    text(StatusCode::BAD_REQUEST, format!("{why}\n"))
}

/// `POST /transfer?from=A&to=B&amount=N`.
pub(super) async fn transfer(State(storage): State<Storage>, uri: Uri, body: String) -> Response {
    let parsed = Params::parse(uri.query(), &body).and_then(|p| {
        let (from, to, amount) = (p.get("from")?, p.get("to")?, p.amount()?);
        if from == to {
            return Err("from and to are the same wallet".to_owned());
        }
        Ok((from.to_owned(), to.to_owned(), amount))
    });
    let (from, to, amount) = match parsed {
        Ok(p) => p,
        Err(why) => return bad_request(why),
    };
    let names = [wallet_scope(&from), wallet_scope(&to)];
    let moved = storage
        .try_scoped_many(&names, |w: &mut [Wallet]| move_money(w, amount))
        .await;
    match moved {
        Ok((from_balance, to_balance)) => {
            tracing::debug!(from = ?from, to = ?to, amount, "transferred");
            json(&serde_json::json!({
                "from": Balance { user: &from, balance: from_balance },
                "to": Balance { user: &to, balance: to_balance },
            }))
        }
        Err(WalletError::Insufficient { balance }) => text(
            StatusCode::CONFLICT,
            format!(
                "insufficient funds: {from:?} has {balance}, the transfer needs {amount}; \
                 nothing was moved\n"
            ),
        ),
        Err(WalletError::Overflow) => bad_request(format!(
            "{to:?}'s balance would overflow; nothing was moved"
        )),
        Err(WalletError::Storage(e)) => failure(&names.join(" "), &e),
    }
}

/// `POST /deposit?user=NAME&amount=N`.
pub(super) async fn deposit(State(storage): State<Storage>, uri: Uri, body: String) -> Response {
    let parsed = Params::parse(uri.query(), &body)
        .and_then(|p| Ok((p.get("user")?.to_owned(), p.amount()?)));
    let (user, amount) = match parsed {
        Ok(p) => p,
        Err(why) => return bad_request(why),
    };
    let scope = wallet_scope(&user);
    let added = storage
        .try_scoped(&scope, |w: &mut Wallet| {
            w.balance = w.balance.checked_add(amount).ok_or(WalletError::Overflow)?;
            Ok::<_, WalletError>(w.balance)
        })
        .await;
    match added {
        Ok(balance) => json(&Balance {
            user: &user,
            balance,
        }),
        Err(WalletError::Storage(e)) => failure(&scope, &e),
        Err(_) => bad_request(format!("{user:?}'s balance would overflow")),
    }
}

/// `GET /wallet?user=NAME`.
pub(super) async fn wallet(State(storage): State<Storage>, uri: Uri) -> Response {
    let user = match Params::parse(uri.query(), "").and_then(|p| Ok(p.get("user")?.to_owned())) {
        Ok(u) => u,
        Err(why) => return bad_request(why),
    };
    let scope = wallet_scope(&user);
    match storage.get::<Wallet>(&scope).await {
        Ok(w) => json(&Balance {
            user: &user,
            balance: w.map_or(0, |w| w.balance),
        }),
        Err(e) => failure(&scope, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_moves_or_nothing_changes() {
        let mut w = [Wallet { balance: 10 }, Wallet { balance: 5 }];
        assert_eq!(move_money(&mut w, 4).ok(), Some((6, 9)));
        assert!(matches!(
            move_money(&mut w, 7),
            Err(WalletError::Insufficient { balance: 6 })
        ));
        assert_eq!(w, [Wallet { balance: 6 }, Wallet { balance: 9 }]);
        w[1].balance = u64::MAX;
        assert!(matches!(move_money(&mut w, 1), Err(WalletError::Overflow)));
        assert_eq!(w[0].balance, 6);
    }

    #[test]
    fn params() {
        let p = Params::parse(Some("from=a+b&to=%E5%90%8D"), "amount=3\n").unwrap();
        assert_eq!(p.get("from").unwrap(), "a b");
        assert_eq!(p.get("to").unwrap(), "名");
        assert_eq!(p.amount().unwrap(), 3);
        assert!(p.get("user").is_err());
        assert!(Params::parse(Some("amount=1"), "amount=2").is_err());
        for bad in ["amount=0", "amount=-1", "amount=x", "amount=1.5", "amount="] {
            assert!(
                Params::parse(Some(bad), "").unwrap().amount().is_err(),
                "{bad}"
            );
        }
        assert!(Params::parse(Some("user=%FF"), "").is_err());
    }
}
