//! What the derive emits when the input has errors: the errors, and a stub impl so that the
//! rest of the program still sees the type as a scope and reports nothing more because of it
//! (the pattern of thiserror's `fallback.rs`).

use crate::ast::Input;
use crate::expand::krate;
use proc_macro2::TokenStream;
use quote::quote;

/// The errors as `compile_error!`s, then an empty impl of the trait.
pub(crate) fn expand(input: &Input, errors: syn::Error) -> TokenStream {
    let errors = errors.to_compile_error();
    let krate = krate(input);
    let private = quote!(#krate::__private);
    let ident = input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let predicates = where_clause
        .map(|w| w.predicates.iter())
        .into_iter()
        .flatten();
    quote! {
        #errors

        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::Scope for #ident #ty_generics
            where
                #(#predicates,)*
                // A higher-ranked bound is not checked where the impl is written, so a type
                // missing a supertrait adds no second error here.
                // https://github.com/rust-lang/rust/issues/48214
                for<'__workaround> #ident #ty_generics: #private::Serialize
                    + #private::DeserializeOwned
                    + #private::Default
                    + #private::Send
                    + 'static,
            {
            }
        };
    }
}
