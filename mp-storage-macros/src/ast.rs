//! The derive input turned into our own model: the type, its parsed `#[scope]` attributes and
//! where the misplaced ones are.

use crate::attr::{self, Attrs};
use crate::ctxt::Ctxt;
use syn::{Attribute, Data, DeriveInput, Fields, Generics, Ident, Token};

/// The type `#[derive(Scope)]` is on.
pub(crate) struct Input<'a> {
    /// The type's name.
    pub ident: &'a Ident,
    /// Its generics and where-clause, carried over to the impl.
    pub generics: &'a Generics,
    /// Its `#[scope(...)]` attributes.
    pub attrs: Attrs,
    /// Struct, enum or union.
    pub kind: Kind<'a>,
    /// `#[scope]` attributes on fields or variants, where they mean nothing.
    pub misplaced: Vec<Misplaced<'a>>,
}

/// What kind of type the input is.
pub(crate) enum Kind<'a> {
    Struct,
    Enum,
    Union(&'a Token![union]),
}

/// A `#[scope]` attribute on a field or a variant.
pub(crate) struct Misplaced<'a> {
    pub attr: &'a Attribute,
    pub on: &'static str,
}

impl<'a> Input<'a> {
    /// Builds the model, recording attribute errors in `cx`.
    pub(crate) fn from_syn(node: &'a DeriveInput, cx: &mut Ctxt) -> Self {
        let mut misplaced = Vec::new();
        let kind = match &node.data {
            Data::Struct(data) => {
                fields_attrs(&data.fields, &mut misplaced);
                Kind::Struct
            }
            Data::Enum(data) => {
                for variant in &data.variants {
                    misplaced.extend(scope_attrs(&variant.attrs, "variant"));
                    fields_attrs(&variant.fields, &mut misplaced);
                }
                Kind::Enum
            }
            Data::Union(data) => {
                for field in &data.fields.named {
                    misplaced.extend(scope_attrs(&field.attrs, "field"));
                }
                Kind::Union(&data.union_token)
            }
        };
        Input {
            ident: &node.ident,
            generics: &node.generics,
            attrs: attr::get(&node.attrs, cx),
            kind,
            misplaced,
        }
    }
}

fn fields_attrs<'a>(fields: &'a Fields, out: &mut Vec<Misplaced<'a>>) {
    for field in fields {
        out.extend(scope_attrs(&field.attrs, "field"));
    }
}

fn scope_attrs<'a>(
    attrs: &'a [Attribute],
    on: &'static str,
) -> impl Iterator<Item = Misplaced<'a>> + 'a {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("scope"))
        .map(move |attr| Misplaced { attr, on })
}
