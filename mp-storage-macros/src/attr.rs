//! Parsing of the `#[scope(...)]` attributes on the type.
//!
//! Every key with a value is parsed as `key = <expression>` (`migrate_from` as `key = <type>`)
//! so that a value of the wrong kind is consumed and reported at its own token while parsing
//! goes on with the next key; the flags (`lossy`, `read_newer`) take no value.

use crate::ctxt::Ctxt;
use syn::meta::ParseNestedMeta;
use syn::parse::discouraged::Speculative;
use syn::{Attribute, Expr, ExprLit, ExprPath, Lit, LitInt, LitStr, Path, Token, Type, UnOp};

/// The parsed `#[scope(...)]` keys of a type. A key given with an unusable value is `None`
/// (its error is in the [`Ctxt`]).
#[derive(Default)]
pub(crate) struct Attrs {
    /// `namespace = "…"`, checked further in `valid.rs`.
    pub namespace: Option<LitStr>,
    /// `version = N`.
    pub version: Option<Version>,
    /// `migrate = path::to::fn`.
    pub migrate: Option<ExprPath>,
    /// `migrate_from = OldType`.
    pub migrate_from: Option<Type>,
    /// `lossy`: the flag's own token, for spans.
    pub lossy: Option<Path>,
    /// `read_newer`.
    pub read_newer: Option<Path>,
    /// `crate = "path"`.
    pub krate: Option<Path>,
    /// `ttl_secs = N`: seconds, 1 to [`MAX_TTL_SECS`].
    pub ttl_secs: Option<u64>,
}

/// The longest `ttl_secs`: ten years.
pub(crate) const MAX_TTL_SECS: u64 = 10 * 366 * 24 * 60 * 60;

/// `version = N`: the value and its literal, for spans.
pub(crate) struct Version {
    pub value: u32,
    pub lit: LitInt,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Namespace,
    Version,
    Migrate,
    MigrateFrom,
    Lossy,
    ReadNewer,
    Crate,
    TtlSecs,
}

impl Key {
    fn from_path(path: &Path) -> Option<Key> {
        let ident = path.get_ident()?;
        Some(match ident.to_string().as_str() {
            "namespace" => Key::Namespace,
            "version" => Key::Version,
            "migrate" => Key::Migrate,
            "migrate_from" => Key::MigrateFrom,
            "lossy" => Key::Lossy,
            "read_newer" => Key::ReadNewer,
            "crate" => Key::Crate,
            "ttl_secs" => Key::TtlSecs,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Key::Namespace => "namespace",
            Key::Version => "version",
            Key::Migrate => "migrate",
            Key::MigrateFrom => "migrate_from",
            Key::Lossy => "lossy",
            Key::ReadNewer => "read_newer",
            Key::Crate => "crate",
            Key::TtlSecs => "ttl_secs",
        }
    }

    /// Whether the key is a flag, written without a value.
    fn is_flag(self) -> bool {
        matches!(self, Key::Lossy | Key::ReadNewer)
    }

    fn example(self) -> &'static str {
        match self {
            Key::Namespace => "`namespace = \"cart:\"`",
            Key::Version => "`version = 2`",
            Key::Migrate => "`migrate = upgrade`",
            Key::MigrateFrom => "`migrate_from = CartV1`",
            Key::Lossy => "`#[scope(lossy)]`",
            Key::ReadNewer => "`#[scope(read_newer)]`",
            Key::Crate => "`crate = \"my_crate::mp_storage\"`",
            Key::TtlSecs => "`ttl_secs = 1800`",
        }
    }
}

/// Parses every `#[scope(...)]` attribute in `attrs`; keys may be spread over several.
pub(crate) fn get(attrs: &[Attribute], cx: &mut Ctxt) -> Attrs {
    let mut parser = Parser {
        attrs: Attrs::default(),
        seen: Vec::new(),
        cx,
    };
    for attr in attrs.iter().filter(|a| a.path().is_ident("scope")) {
        if let Err(err) = attr.parse_nested_meta(|meta| parser.key(&meta)) {
            parser.cx.syn_error(err);
        }
    }
    parser.attrs
}

struct Parser<'c> {
    attrs: Attrs,
    seen: Vec<Key>,
    cx: &'c mut Ctxt,
}

impl Parser<'_> {
    fn key(&mut self, meta: &ParseNestedMeta) -> syn::Result<()> {
        let Some(key) = Key::from_path(&meta.path) else {
            self.cx.error_spanned_by(
                &meta.path,
                format!(
                    "unknown scope attribute `{}`; expected `namespace`, `version`, `migrate`, \
                     `migrate_from`, `lossy`, `read_newer`, `ttl_secs` or `crate`",
                    path_to_string(&meta.path)
                ),
            );
            return skip_value(meta);
        };
        if key.is_flag() {
            return self.flag(key, meta);
        }
        if !meta.input.peek(Token![=]) {
            self.cx.error_spanned_by(
                &meta.path,
                format!("`{}` needs a value, as in {}", key.name(), key.example()),
            );
            return skip_value(meta);
        }
        if key == Key::MigrateFrom {
            return self.migrate_from(meta);
        }
        let value: Expr = meta.value()?.parse()?;
        if !self.first(key, meta) {
            return Ok(());
        }
        let value = ungroup(&value);
        match key {
            Key::Namespace => self.attrs.namespace = self.string(key, value),
            Key::Version => self.attrs.version = self.version(value),
            Key::Migrate => self.attrs.migrate = self.migrate(value),
            Key::Crate => self.attrs.krate = self.krate(value),
            Key::TtlSecs => self.attrs.ttl_secs = self.ttl_secs(value),
            Key::MigrateFrom | Key::Lossy | Key::ReadNewer => {}
        }
        Ok(())
    }

    /// Notes `key` as given, or reports it as a duplicate; whether it was new.
    fn first(&mut self, key: Key, meta: &ParseNestedMeta) -> bool {
        if self.seen.contains(&key) {
            self.cx.error_spanned_by(
                &meta.path,
                format!("duplicate scope attribute `{}`", key.name()),
            );
            return false;
        }
        self.seen.push(key);
        true
    }

    /// A flag: `lossy`, `read_newer`.
    fn flag(&mut self, key: Key, meta: &ParseNestedMeta) -> syn::Result<()> {
        if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
            self.cx.error_spanned_by(
                &meta.path,
                format!("`{}` takes no value: write {}", key.name(), key.example()),
            );
            return skip_value(meta);
        }
        if self.first(key, meta) {
            let path = Some(meta.path.clone());
            match key {
                Key::Lossy => self.attrs.lossy = path,
                _ => self.attrs.read_newer = path,
            }
        }
        Ok(())
    }

    /// `migrate_from = Type`: a type, where anything else is reported and skipped.
    fn migrate_from(&mut self, meta: &ParseNestedMeta) -> syn::Result<()> {
        let input = meta.value()?;
        let fork = input.fork();
        let ty = match fork.parse::<Type>() {
            Ok(ty) if fork.is_empty() || fork.peek(Token![,]) => {
                input.advance_to(&fork);
                Some(ty)
            }
            _ => {
                let value: Expr = input.parse()?;
                self.cx.error_spanned_by(
                    &value,
                    format!(
                        "expected the type of the previous schema version, as in {}",
                        Key::MigrateFrom.example()
                    ),
                );
                None
            }
        };
        if self.first(Key::MigrateFrom, meta) {
            self.attrs.migrate_from = ty;
        }
        Ok(())
    }

    fn string(&mut self, key: Key, value: &Expr) -> Option<LitStr> {
        if let Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) = value
        {
            if lit.suffix().is_empty() {
                return Some(lit.clone());
            }
            self.cx.error_spanned_by(
                lit,
                format!("remove the `{}` suffix of the string", lit.suffix()),
            );
            return None;
        }
        self.cx.error_spanned_by(
            value,
            format!("expected a string literal, as in {}", key.example()),
        );
        None
    }

    fn version(&mut self, value: &Expr) -> Option<Version> {
        const RANGE: &str = "`version` must fit in a u32 (0 to 4294967295)";
        match value {
            Expr::Lit(ExprLit {
                lit: Lit::Int(lit), ..
            }) => {
                if !matches!(lit.suffix(), "" | "u32") {
                    self.cx.error_spanned_by(
                        lit,
                        format!("`version` is a u32: remove the `{}` suffix", lit.suffix()),
                    );
                    return None;
                }
                match lit.base10_parse::<u32>() {
                    Ok(v) => Some(Version {
                        value: v,
                        lit: lit.clone(),
                    }),
                    Err(_) => {
                        self.cx.error_spanned_by(lit, RANGE);
                        None
                    }
                }
            }
            Expr::Unary(unary)
                if matches!(unary.op, UnOp::Neg(_))
                    && matches!(
                        ungroup(&unary.expr),
                        Expr::Lit(ExprLit {
                            lit: Lit::Int(_),
                            ..
                        })
                    ) =>
            {
                self.cx.error_spanned_by(value, RANGE);
                None
            }
            _ => {
                self.cx.error_spanned_by(
                    value,
                    format!(
                        "expected an integer literal, as in {}",
                        Key::Version.example()
                    ),
                );
                None
            }
        }
    }

    fn ttl_secs(&mut self, value: &Expr) -> Option<u64> {
        let range = format!(
            "`ttl_secs` is a positive number of seconds, at most {MAX_TTL_SECS} (ten years)"
        );
        match value {
            Expr::Lit(ExprLit {
                lit: Lit::Int(lit), ..
            }) => {
                if !matches!(lit.suffix(), "" | "u64") {
                    self.cx.error_spanned_by(
                        lit,
                        format!("`ttl_secs` is a u64: remove the `{}` suffix", lit.suffix()),
                    );
                    return None;
                }
                match lit.base10_parse::<u64>() {
                    Ok(v) if (1..=MAX_TTL_SECS).contains(&v) => Some(v),
                    _ => {
                        self.cx.error_spanned_by(lit, range);
                        None
                    }
                }
            }
            Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => {
                self.cx.error_spanned_by(value, range);
                None
            }
            _ => {
                self.cx.error_spanned_by(
                    value,
                    format!(
                        "expected an integer literal, as in {}",
                        Key::TtlSecs.example()
                    ),
                );
                None
            }
        }
    }

    fn migrate(&mut self, value: &Expr) -> Option<ExprPath> {
        if let Expr::Path(path) = value {
            if path.attrs.is_empty() {
                return Some(path.clone());
            }
        }
        self.cx.error_spanned_by(
            value,
            format!(
                "expected the path of a function, as in {}",
                Key::Migrate.example()
            ),
        );
        None
    }

    fn krate(&mut self, value: &Expr) -> Option<Path> {
        let lit = self.string(Key::Crate, value)?;
        match lit.parse::<Path>() {
            Ok(path) => Some(path),
            Err(_) => {
                self.cx.error_spanned_by(
                    &lit,
                    format!("`crate` must hold a path, as in {}", Key::Crate.example()),
                );
                None
            }
        }
    }
}

/// Consumes the value of a key that is being rejected, so parsing goes on after it.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(())
}

/// Looks through the invisible groups that `macro_rules!` puts around its fragments.
fn ungroup(mut expr: &Expr) -> &Expr {
    while let Expr::Group(group) = expr {
        expr = &group.expr;
    }
    expr
}

fn path_to_string(path: &Path) -> String {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    let joined = segments.join("::");
    if path.leading_colon.is_some() {
        format!("::{joined}")
    } else {
        joined
    }
}
