//! The generated impl.

use crate::ast::Input;
use crate::ctxt::Ctxt;
use crate::{fallback, valid};
use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::DeriveInput;

/// Expands `#[derive(Scope)]`: the impl, or every error found plus a stub impl.
pub(crate) fn derive(node: &DeriveInput) -> TokenStream {
    let mut cx = Ctxt::default();
    let input = Input::from_syn(node, &mut cx);
    valid::check(&input, &mut cx);
    match cx.check() {
        Ok(()) => impl_scope(&input),
        Err(errors) => fallback::expand(&input, errors),
    }
}

/// The path of the mp_storage crate: `crate = "…"`, or `::mp_storage`.
pub(crate) fn krate(input: &Input) -> TokenStream {
    match &input.attrs.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::mp_storage),
    }
}

fn impl_scope(input: &Input) -> TokenStream {
    let krate = krate(input);
    let private = quote!(#krate::__private);
    let ident = input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();

    // A generic type is a scope exactly when its instance has the trait's supertraits
    // (serde's derives bound every type parameter, so this follows them).
    let mut predicates: Vec<TokenStream> = where_clause
        .map(|w| w.predicates.iter().map(ToTokens::to_token_stream).collect())
        .unwrap_or_default();
    if !input.generics.params.is_empty() {
        predicates.push(quote! {
            #ident #ty_generics: #private::Serialize
                + #private::DeserializeOwned
                + #private::Default
                + #private::Send
                + 'static
        });
    }
    let where_clause = if predicates.is_empty() {
        None
    } else {
        Some(quote!(where #(#predicates,)*))
    };

    let namespace = input.attrs.namespace.as_ref().map(|lit| {
        quote! {
            const NAMESPACE: &'static #private::str = #lit;
        }
    });
    let version = input.attrs.version.as_ref().map(|version| {
        let value = Literal::u32_unsuffixed(version.value);
        quote! {
            const VERSION: #private::u32 = #value;
        }
    });
    let migrate = input.attrs.migrate.as_ref().map(|path| {
        // Mixed-site names, so that a user function called `from` or `old` is not shadowed.
        let from = Ident::new("from", Span::mixed_site());
        let old = Ident::new("old", Span::mixed_site());
        let call = quote_spanned! {path.span()=>
            #private::migrate::<Self, _>(#path, #from, #old)
        };
        quote! {
            fn migrate(
                #from: #private::u32,
                #old: #private::Value,
            ) -> #private::Result<Self, #private::String> {
                #call
            }
        }
    });

    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::Scope for #ident #ty_generics #where_clause {
                #namespace
                #version
                #migrate
            }
        };
    }
}
