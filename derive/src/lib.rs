//! Derive macros for [Annals](https://docs.rs/annals): `#[derive(DomainEvent)]`.
//!
//! Use them through the `annals` crate (feature `derive`, on by default), which re-exports
//! them beside the traits they implement; the generated code names `::annals`.
//!
//! `#[derive(DomainEvent)]` on an enum makes each variant an event type: named after the
//! variant unless `#[annals(event_type = "…")]` says otherwise, at schema version 1 unless
//! `#[annals(schema_version = N)]` (on the enum for every variant, or on one variant) says
//! otherwise. The stored payload is the variant's fields alone, encoded with serde, so the
//! enum must also derive `Serialize` and `Deserialize` with serde's default (externally
//! tagged) representation.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::{parse_macro_input, Attribute, Data, DeriveInput, LitInt, LitStr};

/// Implements `annals::DomainEvent` for an enum; see the crate docs.
///
/// ```ignore
/// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
/// #[annals(schema_version = 1)]
/// enum AccountEvent {
///     Opened { owner: String },
///     #[annals(schema_version = 2)]
///     Deposited { amount: u64 },
///     #[annals(event_type = "AccountClosed")]
///     Closed,
/// }
/// ```
#[proc_macro_derive(DomainEvent, attributes(annals))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

#[derive(Default)]
struct Options {
    event_type: Option<LitStr>,
    schema_version: Option<(u16, Span)>,
}

fn parse_options(attrs: &[Attribute], allow_event_type: bool) -> syn::Result<Options> {
    let mut options = Options::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("annals")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("event_type") && allow_event_type {
                let name: LitStr = meta.value()?.parse()?;
                if name.value().is_empty() {
                    return Err(meta.error("an event type cannot be empty"));
                }
                options.event_type = Some(name);
                Ok(())
            } else if meta.path.is_ident("schema_version") {
                let lit: LitInt = meta.value()?.parse()?;
                let version: u16 = lit.base10_parse()?;
                if version == 0 {
                    return Err(syn::Error::new(lit.span(), "schema versions start at 1"));
                }
                options.schema_version = Some((version, lit.span()));
                Ok(())
            } else if allow_event_type {
                Err(meta.error("expected `event_type = \"…\"` or `schema_version = N`"))
            } else {
                Err(meta.error("expected `schema_version = N` (`event_type` goes on a variant)"))
            }
        })?;
    }
    Ok(options)
}

fn refuse_other_serde_representations(attrs: &[Attribute]) -> syn::Result<()> {
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let mut found = None;
        // Only the keys matter here; values of other keys are skipped.
        let _ = attr.parse_nested_meta(|meta| {
            for key in ["tag", "content", "untagged"] {
                if meta.path.is_ident(key) {
                    found = Some(key);
                }
            }
            if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
        if let Some(key) = found {
            return Err(syn::Error::new_spanned(
                attr,
                format!(
                    "#[derive(DomainEvent)] stores the variant's payload alone and needs serde's default enum representation; remove `{key}`"
                ),
            ));
        }
    }
    Ok(())
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "#[derive(DomainEvent)] needs an enum, one variant per event type; implement `annals::DomainEvent` by hand for other types",
        ));
    };
    refuse_other_serde_representations(&input.attrs)?;
    let defaults = parse_options(&input.attrs, false)?;
    let default_version = defaults.schema_version.map_or(1, |(v, _)| v);

    let mut names: Vec<LitStr> = Vec::new();
    let mut versions: Vec<u16> = Vec::new();
    let mut patterns = Vec::new();
    for variant in &data.variants {
        let options = parse_options(&variant.attrs, true)?;
        let name = options
            .event_type
            .unwrap_or_else(|| LitStr::new(&variant.ident.to_string(), variant.ident.span()));
        if let Some(earlier) = names.iter().find(|n| n.value() == name.value()) {
            let mut error = syn::Error::new(
                name.span(),
                format!("event type `{}` is used by two variants", name.value()),
            );
            error.combine(syn::Error::new(earlier.span(), "first used here"));
            return Err(error);
        }
        let ident = &variant.ident;
        patterns.push(quote!(Self::#ident { .. }));
        versions.push(options.schema_version.map_or(default_version, |(v, _)| v));
        names.push(name);
    }
    let indexes = (0..names.len()).map(|i| u32::try_from(i).unwrap_or(u32::MAX));

    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let event_type_arms = patterns.iter().zip(&names).map(|(p, n)| quote!(#p => #n,));
    let version_arms = patterns
        .iter()
        .zip(&versions)
        .map(|(p, v)| quote!(#p => #v,));
    let table = names.iter().zip(&versions).map(|(n, v)| quote!((#n, #v),));
    let decode_arms = names.iter().zip(indexes).map(|(n, i)| quote!(#n => #i,));

    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::annals::DomainEvent for #ident #ty_generics #where_clause {
            const EVENT_TYPES: &'static [(&'static str, u16)] = &[#(#table)*];

            fn event_type(&self) -> &'static str {
                match self {
                    #(#event_type_arms)*
                }
            }

            fn schema_version(&self) -> u16 {
                match self {
                    #(#version_arms)*
                }
            }

            fn encode<__C: ::annals::codec::Codec>(
                &self,
                codec: &__C,
            ) -> ::core::result::Result<::std::vec::Vec<u8>, ::annals::Error> {
                ::annals::codec::encode_variant(
                    codec,
                    ::annals::DomainEvent::event_type(self),
                    self,
                )
            }

            fn decode<__C: ::annals::codec::Codec>(
                codec: &__C,
                event_type: &str,
                payload: &[u8],
            ) -> ::core::result::Result<Self, ::annals::Error> {
                let index: u32 = match event_type {
                    #(#decode_arms)*
                    _ => {
                        return ::core::result::Result::Err(::annals::Error::UnknownEventType {
                            event_type: ::std::borrow::ToOwned::to_owned(event_type),
                            schema_version: 0,
                        })
                    }
                };
                ::annals::codec::decode_variant(codec, event_type, index, payload)
            }
        }
    })
}
