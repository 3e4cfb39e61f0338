//! Checks of the input that need more than one attribute, or the type itself.

use crate::ast::{Input, Kind};
use crate::ctxt::Ctxt;
use quote::ToTokens;

/// The longest namespace accepted, in bytes (as long as the longest scope name).
const MAX_NAMESPACE_LEN: usize = 1024;

/// Records in `cx` every problem of `input` that parsing alone did not find.
pub(crate) fn check(input: &Input, cx: &mut Ctxt) {
    if let Kind::Union(token) = input.kind {
        cx.error_spanned_by(
            token,
            "#[derive(Scope)] does not support unions; use a struct or an enum",
        );
    }

    for misplaced in &input.misplaced {
        cx.error_spanned_by(
            misplaced.attr,
            format!("#[scope(...)] goes on the type, not on a {}", misplaced.on),
        );
    }

    let attrs = &input.attrs;
    if let Some(lit) = &attrs.namespace {
        let namespace = lit.value();
        if namespace.contains('\0') {
            cx.error_spanned_by(lit, "`namespace` must not contain a NUL character");
        }
        if namespace.len() > MAX_NAMESPACE_LEN {
            cx.error_spanned_by(
                lit,
                format!(
                    "`namespace` is {} bytes long, over the limit of {MAX_NAMESPACE_LEN}",
                    namespace.len()
                ),
            );
        }
    }

    if let (Some(_), Some(old)) = (&attrs.migrate, &attrs.migrate_from) {
        cx.error_spanned_by(
            old,
            "`migrate` and `migrate_from` cannot both be given: keep the function or the type of \
             the previous version",
        );
    }

    // The version a migration needs, checked once even when both forms were given.
    let migration: Option<(&dyn ToTokens, &str)> = match (&attrs.migrate, &attrs.migrate_from) {
        (Some(path), _) => Some((path, "migrate")),
        (None, Some(old)) => Some((old, "migrate_from")),
        (None, None) => None,
    };
    if let Some((tokens, key)) = migration {
        match &attrs.version {
            None => cx.error_spanned_by(
                tokens,
                format!(
                    "`{key}` needs `version = N` with N of 1 or more: it converts records stored \
                     at older versions"
                ),
            ),
            Some(version) if version.value == 0 => cx.error_spanned_by(
                &version.lit,
                format!(
                    "`version` must be 1 or more when `{key}` is given: no record is older than \
                     version 0"
                ),
            ),
            Some(_) => {}
        }
    }
}
