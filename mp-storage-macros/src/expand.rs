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
        // The previous version's type may name the parameters: its instance must be a scope.
        if let Some(old) = &input.attrs.migrate_from {
            predicates.push(quote!(#old: #krate::Scope));
        }
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

    let ttl = input.attrs.ttl_secs.map(|secs| {
        let secs = Literal::u64_unsuffixed(secs);
        quote! {
            const TTL: #private::Option<#private::Duration> =
                #private::Option::Some(#private::Duration::from_secs(#secs));
        }
    });
    let lossy = input.attrs.lossy.as_ref().map(|_| {
        quote! {
            const LOSSY: #private::bool = true;
        }
    });
    let read_newer = input.attrs.read_newer.as_ref().map(|_| {
        quote! {
            const READ_NEWER: #private::bool = true;
        }
    });
    let (migrate_from, older_check) = match (&input.attrs.migrate_from, &input.attrs.version) {
        (Some(old), Some(version)) => {
            let from = Ident::new("from", Span::mixed_site());
            let stored = Ident::new("old", Span::mixed_site());
            let value = Literal::u32_unsuffixed(version.value);
            // Spanned at the old type, so that a missing `From` impl or `Scope` impl, or a version
            // that is not older, is reported there.
            let call = quote_spanned! {old.span()=>
                #private::migrate_from::<#old, Self>(
                    #from,
                    #stored,
                    <#old as #krate::Scope>::VERSION,
                    <#old as #krate::Scope>::migrate,
                )
            };
            // The callee in parentheses gives the whole call the old type's span, so that the
            // error of a version that is not older points there.
            let check = quote_spanned! {old.span()=>
                (#private::assert_older)(<#old as #krate::Scope>::VERSION, #value)
            };
            // A generic type's old type may name its parameters: checked where `migrate` is
            // instantiated; any other is checked where it is defined.
            let (inline, free) = if input.generics.params.is_empty() {
                (None, Some(quote!(const _: () = #check;)))
            } else {
                (Some(quote!(const { #check };)), None)
            };
            let method = quote! {
                fn migrate(
                    #from: #private::u32,
                    #stored: #private::Value,
                ) -> #private::Result<Self, #private::String> {
                    #inline
                    #call
                }
            };
            (Some(method), free)
        }
        _ => (None, None),
    };

    quote! {
        const _: () = {
            #older_check

            #[automatically_derived]
            impl #impl_generics #krate::Scope for #ident #ty_generics #where_clause {
                #namespace
                #version
                #ttl
                #lossy
                #read_newer
                #migrate
                #migrate_from
            }
        };
    }
}
