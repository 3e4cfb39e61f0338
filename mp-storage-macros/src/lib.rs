//! `#[derive(Scope)]` for mp-storage. Use it through `mp_storage::Scope`.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, DeriveInput};

/// Implements `mp_storage::Scope`. See the trait's documentation for the attributes.
#[proc_macro_derive(Scope, attributes(scope))]
pub fn derive_scope(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        const _: () = {
            impl #impl_generics ::mp_storage::Scope for #ident #ty_generics #where_clause {}
        };
    }
    .into()
}
