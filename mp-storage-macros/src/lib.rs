//! `#[derive(Scope)]` for mp-storage. Use it through `mp_storage::Scope`, which re-exports it
//! beside the trait of the same name; the trait's documentation lists the attributes.
//!
//! The derive never panics: every problem in the attributes becomes a `compile_error!` that
//! points at the offending token, all of them are reported at once, and a stub impl is still
//! emitted so that one mistake gives one message.

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `mp_storage::Scope`. See the trait's documentation for the `#[scope(...)]`
/// attributes: `namespace = "…"`, `version = N`, `migrate = path::to::fn`,
/// `migrate_from = OldType`, `lossy`, `read_newer`, `crate = "…"`.
#[proc_macro_derive(Scope, attributes(scope))]
pub fn derive_scope(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
