//! The `#[pglite_test]` attribute of [`pglite-harness`](https://docs.rs/pglite-harness): a real
//! PostgreSQL for every test, run in-process.
//!
//! Use it through `pglite_harness::pglite_test` (this crate is re-exported there; depending on it
//! directly is not needed). The attribute turns a function taking one `PgliteDb` into a `#[test]`
//! that starts a fresh database, hands it to the function, and shuts it down afterwards.
//!
//! ```rust,ignore
//! use pglite_harness::{pglite_test, PgliteDb};
//!
//! #[pglite_test]
//! async fn creates_users(db: PgliteDb) {
//!     let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
//!     sqlx::query("CREATE TABLE users (id int)").execute(&pool).await.unwrap();
//! }
//! ```
//!
//! # The test function
//!
//! - It takes exactly one parameter whose type is `PgliteDb` (written as `PgliteDb`,
//!   `pglite_harness::PgliteDb`, or any path ending in `PgliteDb`). The pattern is free:
//!   `db`, `mut db`, `_db`.
//! - `async fn` runs on a Tokio runtime that `pglite-harness` brings along (your crate does not
//!   need to depend on Tokio); plain `fn` runs on the test thread, for synchronous clients.
//! - It may return anything a `#[test]` may return, such as `Result<(), Box<dyn Error>>`, so `?`
//!   works in the body.
//! - Other attributes (`#[should_panic]`, `#[ignore]`, `#[cfg(..)]`, doc comments, lint
//!   attributes) are kept on the generated `#[test]`. Do not add `#[test]` or `#[tokio::test]`
//!   yourself: `#[pglite_test]` is already the test attribute.
//! - It cannot be `const`, `unsafe`, `extern`, generic, or a method (`self`).
//!
//! # Options
//!
//! Options go in the attribute's parentheses, separated by commas, in any order, each at most once.
//!
//! - `temp_dir`: the database lives in files in a temporary directory (removed after the test)
//!   instead of in memory, so `db.restart()` keeps the data: for persistence tests.
//! - `migrations = "dir"`: applies the sqlx-style migrations in `dir` (`<version>_<name>.sql`
//!   files, in version order) before the test.
//! - `fixtures("a.sql", "b.sql", ..)`: runs these SQL files, in the order given, after the
//!   migrations.
//! - `extensions("hstore", "pg_trgm", ..)`: `CREATE EXTENSION` for each name, before the migrations
//!   and fixtures.
//! - `user = "name"`: the test connects as this user (created if missing) instead of `postgres`.
//! - `database = "name"`: the test connects to this database (created if missing) instead of
//!   `postgres`.
//!
//! Relative paths (`migrations`, `fixtures`) are relative to the root of the crate that holds the
//! test (its `CARGO_MANIFEST_DIR`), not to the current directory; absolute paths are used as they
//! are.
//!
//! ```rust,ignore
//! use pglite_harness::{pglite_test, PgliteDb};
//!
//! // File-backed in a temporary directory: the data survives a restart.
//! #[pglite_test(temp_dir)]
//! async fn survives_restart(mut db: PgliteDb) {
//!     db.restart().await.unwrap();
//! }
//!
//! // The schema from `<crate root>/migrations`.
//! #[pglite_test(migrations = "migrations")]
//! async fn with_schema(db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = sqlx::PgPool::connect(db.url()).await?;
//!     sqlx::query("SELECT count(*) FROM users").execute(&pool).await?;
//!     Ok(())
//! }
//!
//! // Everything at once, with a synchronous test for a synchronous client.
//! #[pglite_test(
//!     migrations = "migrations",
//!     fixtures("tests/fixtures/users.sql", "tests/fixtures/orders.sql"),
//!     extensions("hstore", "pg_trgm"),
//!     user = "app",
//!     database = "shop",
//! )]
//! fn sync_test(db: PgliteDb) {
//!     let mut client = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
//!     client.batch_execute("SELECT 1").unwrap();
//! }
//! ```
//!
//! # What it expands to
//!
//! ```rust,ignore
//! #[pglite_test(temp_dir, fixtures("users.sql"))]
//! async fn name(mut db: PgliteDb) -> Result<(), MyError> { body }
//!
//! // becomes
//!
//! #[::core::prelude::v1::test]
//! fn name() -> Result<(), MyError> {
//!     ::pglite_harness::__private::run_async_test(
//!         ::pglite_harness::PgliteDb::builder()
//!             .temp_dir()
//!             .fixture(::std::path::Path::new(::core::env!("CARGO_MANIFEST_DIR")).join("users.sql")),
//!         |mut db: PgliteDb| async move { body },
//!     )
//! }
//! ```
//!
//! A plain `fn` calls `run_sync_test(builder, |db: PgliteDb| -> ReturnType { body })` instead.
//! `return` in the body returns from the closure, which is the test's result.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, FnArg, Item, ItemFn, Lit, LitStr, Meta, ReturnType, Token, Type};

/// Runs a test function against its own fresh PostgreSQL (PGlite, in-process).
///
/// The function takes one `PgliteDb` parameter and may be `async` or not; see the
/// [crate documentation](crate) for the details.
///
/// Options, each at most once, in any order:
///
/// - `temp_dir`: file-backed database in a temporary directory (survives `db.restart()`).
/// - `migrations = "dir"`: apply the sqlx-style migrations in `dir`.
/// - `fixtures("a.sql", ..)`: run these SQL files, in order, after the migrations.
/// - `extensions("name", ..)`: `CREATE EXTENSION` each of these first.
/// - `user = "name"`: connect as this user (created if missing).
/// - `database = "name"`: connect to this database (created if missing).
///
/// Relative paths are relative to the crate root (`CARGO_MANIFEST_DIR`).
///
/// ```rust,ignore
/// use pglite_harness::{pglite_test, PgliteDb};
///
/// #[pglite_test]
/// async fn creates_users(db: PgliteDb) {
///     let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
/// }
///
/// #[pglite_test(temp_dir)]
/// async fn survives_restart(mut db: PgliteDb) {
///     db.restart().await.unwrap();
/// }
///
/// #[pglite_test(migrations = "migrations")]
/// async fn with_schema(db: PgliteDb) {}
///
/// #[pglite_test(
///     fixtures("users.sql", "orders.sql"),
///     extensions("hstore", "pg_trgm"),
///     user = "app",
///     database = "shop",
/// )]
/// fn sync_test(db: PgliteDb) { /* a synchronous client */ }
///
/// #[pglite_test]
/// #[should_panic(expected = "does not exist")]
/// async fn missing_table(db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
///     let pool = sqlx::PgPool::connect(db.url()).await?;
///     sqlx::query("SELECT * FROM nope").execute(&pool).await.unwrap();
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn pglite_test(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into()).into()
}

/// The options of one `#[pglite_test(..)]`, as written.
#[derive(Default)]
struct Options {
    temp_dir: Option<Span>,
    migrations: Option<LitStr>,
    fixtures: Option<Vec<LitStr>>,
    extensions: Option<Vec<LitStr>>,
    user: Option<LitStr>,
    database: Option<LitStr>,
}

const VALID_OPTIONS: &str = "`temp_dir`, `migrations = \"dir\"`, `fixtures(\"a.sql\", ..)`, \
                             `extensions(\"name\", ..)`, `user = \"name\"`, `database = \"name\"`";

/// The whole expansion: `attr` is what is inside `#[pglite_test(..)]`, `item` the item it is on.
fn expand(attr: TokenStream2, item: TokenStream2) -> TokenStream2 {
    let options = parse_options(attr);
    let item_fn = match parse_item(item.clone()) {
        Ok(item_fn) => item_fn,
        Err(error) => {
            // Not a function: keep the item as it is so that code using it does not fail too.
            let error = combine(options.err(), error);
            return quote!(#error #item);
        }
    };
    match (options, check_signature(&item_fn)) {
        (Ok(options), Ok(param)) => generate(&options, &item_fn, param),
        (Err(error), Ok(_)) | (Ok(_), Err(error)) => error.into_compile_error(),
        (Err(options), Err(signature)) => combine(Some(options), signature),
    }
}

fn combine(first: Option<syn::Error>, second: syn::Error) -> TokenStream2 {
    let error = match first {
        Some(mut first) => {
            first.combine(second);
            first
        }
        None => second,
    };
    error.into_compile_error()
}

fn parse_item(item: TokenStream2) -> syn::Result<ItemFn> {
    // Point at the item's keyword and name rather than at all of it.
    let what = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(item_fn)) => return Ok(item_fn),
        Ok(Item::Struct(item)) => keyword_and_name(item.struct_token, item.ident),
        Ok(Item::Enum(item)) => keyword_and_name(item.enum_token, item.ident),
        Ok(Item::Union(item)) => keyword_and_name(item.union_token, item.ident),
        Ok(Item::Trait(item)) => keyword_and_name(item.trait_token, item.ident),
        Ok(Item::Mod(item)) => keyword_and_name(item.mod_token, item.ident),
        Ok(Item::Type(item)) => keyword_and_name(item.type_token, item.ident),
        Ok(Item::Const(item)) => keyword_and_name(item.const_token, item.ident),
        Ok(Item::Static(item)) => keyword_and_name(item.static_token, item.ident),
        Ok(Item::Impl(item)) => {
            let (impl_token, self_ty) = (item.impl_token, item.self_ty);
            quote!(#impl_token #self_ty)
        }
        Ok(other) => other.into_token_stream(),
        Err(_) => item,
    };
    Err(syn::Error::new_spanned(
        what,
        "#[pglite_test] goes on a test function: \
         `async fn name(db: PgliteDb) { .. }` or `fn name(db: PgliteDb) { .. }`",
    ))
}

fn keyword_and_name(keyword: impl ToTokens, name: syn::Ident) -> TokenStream2 {
    quote!(#keyword #name)
}

/// Checks what `#[test]` and the runners need; returns the one `PgliteDb` parameter.
fn check_signature(item_fn: &ItemFn) -> syn::Result<&syn::PatType> {
    let sig = &item_fn.sig;
    let mut errors: Vec<syn::Error> = Vec::new();
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new(
            constness.span,
            "#[pglite_test] functions cannot be `const`",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new(
            unsafety.span,
            "#[pglite_test] functions cannot be `unsafe`",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "#[pglite_test] functions cannot be `extern`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let generics = &sig.generics;
        let where_clause = &sig.generics.where_clause;
        errors.push(syn::Error::new_spanned(
            quote!(#generics #where_clause),
            "#[pglite_test] functions cannot be generic (a test has no caller to choose the types)",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "#[pglite_test] functions cannot be variadic",
        ));
    }
    for attr in &item_fn.attrs {
        if attr
            .path()
            .segments
            .last()
            .is_some_and(|last| last.ident == "test")
        {
            errors.push(syn::Error::new_spanned(
                attr,
                "#[pglite_test] already makes this a test: remove this attribute",
            ));
        }
    }

    let mut param = None;
    let mut typed = 0;
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                receiver,
                "#[pglite_test] functions cannot take `self`: write a free function taking `db: PgliteDb`",
            )),
            FnArg::Typed(pat_type) => {
                typed += 1;
                if typed > 1 {
                    errors.push(syn::Error::new_spanned(
                        input,
                        "#[pglite_test] functions take exactly one parameter, the database: remove this one",
                    ));
                } else if is_pglite_db(&pat_type.ty) {
                    param = Some(pat_type);
                } else if let Type::Reference(reference) = &*pat_type.ty
                    && is_pglite_db(&reference.elem)
                {
                    errors.push(syn::Error::new_spanned(
                        &pat_type.ty,
                        "the test owns its database: take it by value, `db: PgliteDb`",
                    ));
                } else {
                    errors.push(syn::Error::new_spanned(
                        &pat_type.ty,
                        "the parameter of a #[pglite_test] function is the database: \
                         its type must be `PgliteDb`",
                    ));
                }
            }
        }
    }
    if sig.inputs.is_empty() {
        errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "#[pglite_test] functions take one parameter, the database: `(db: PgliteDb)`",
        ));
    }

    match errors.into_iter().reduce(|mut all, error| {
        all.combine(error);
        all
    }) {
        Some(error) => Err(error),
        None => Ok(param.expect("one typed parameter was checked")),
    }
}

/// `PgliteDb`, `pglite_harness::PgliteDb`, `crate::PgliteDb`...: a path ending in `PgliteDb`, taken
/// by value.
fn is_pglite_db(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => {
            path.qself.is_none()
                && path
                    .path
                    .segments
                    .last()
                    .is_some_and(|last| last.ident == "PgliteDb" && last.arguments.is_none())
        }
        Type::Group(group) => is_pglite_db(&group.elem),
        Type::Paren(paren) => is_pglite_db(&paren.elem),
        _ => false,
    }
}

fn parse_options(attr: TokenStream2) -> syn::Result<Options> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated
        .parse2(attr)
        .map_err(|error| {
            syn::Error::new(
                error.span(),
                format!("{error}: #[pglite_test] options are {VALID_OPTIONS}"),
            )
        })?;
    let mut options = Options::default();
    let mut errors: Vec<syn::Error> = Vec::new();
    for meta in metas {
        if let Err(error) = apply_option(&mut options, meta) {
            errors.push(error);
        }
    }
    match errors.into_iter().reduce(|mut all, error| {
        all.combine(error);
        all
    }) {
        Some(error) => Err(error),
        None => Ok(options),
    }
}

fn apply_option(options: &mut Options, meta: Meta) -> syn::Result<()> {
    let path = meta.path();
    let Some(name) = path.get_ident().map(ToString::to_string) else {
        return Err(syn::Error::new_spanned(
            path,
            format!("unknown #[pglite_test] option; valid options: {VALID_OPTIONS}"),
        ));
    };
    let span = path.span();
    let duplicate = || {
        syn::Error::new(
            span,
            format!(
                "`{name}` is given twice{}",
                if name == "fixtures" || name == "extensions" {
                    format!(": list them all in one `{name}(..)`")
                } else {
                    String::new()
                }
            ),
        )
    };
    match name.as_str() {
        "temp_dir" => {
            flag(&meta)?;
            if options.temp_dir.is_some() {
                return Err(duplicate());
            }
            options.temp_dir = Some(span);
        }
        "migrations" | "user" | "database" => {
            let example = match name.as_str() {
                "migrations" => "migrations = \"migrations\"",
                "user" => "user = \"app\"",
                _ => "database = \"shop\"",
            };
            let value = string_value(&meta, example)?;
            let slot = match name.as_str() {
                "migrations" => &mut options.migrations,
                "user" => &mut options.user,
                _ => &mut options.database,
            };
            if slot.is_some() {
                return Err(duplicate());
            }
            *slot = Some(value);
        }
        "fixtures" | "extensions" => {
            let example = match name.as_str() {
                "fixtures" => "fixtures(\"users.sql\", \"orders.sql\")",
                _ => "extensions(\"hstore\", \"pg_trgm\")",
            };
            let values = string_list(&meta, example)?;
            let slot = match name.as_str() {
                "fixtures" => &mut options.fixtures,
                _ => &mut options.extensions,
            };
            if slot.is_some() {
                return Err(duplicate());
            }
            *slot = Some(values);
        }
        _ => {
            let hint = match name.as_str() {
                "fixture" => " (did you mean `fixtures(..)`?)".to_owned(),
                "extension" => " (did you mean `extensions(..)`?)".to_owned(),
                "migration" | "migrate" => " (did you mean `migrations = \"..\"`?)".to_owned(),
                "tempdir" | "temp" | "tmp_dir" | "tmpdir" | "file" | "files" | "persistent" => {
                    " (did you mean `temp_dir`?)".to_owned()
                }
                "username" | "role" => " (did you mean `user = \"..\"`?)".to_owned(),
                "db" | "dbname" | "database_name" => " (did you mean `database = \"..\"`?)".to_owned(),
                _ => String::new(),
            };
            return Err(syn::Error::new(
                span,
                format!("unknown #[pglite_test] option `{name}`{hint}; valid options: {VALID_OPTIONS}"),
            ));
        }
    }
    Ok(())
}

/// `temp_dir`: a bare name.
fn flag(meta: &Meta) -> syn::Result<()> {
    match meta {
        Meta::Path(_) => Ok(()),
        Meta::List(_) | Meta::NameValue(_) => Err(syn::Error::new_spanned(
            meta,
            "`temp_dir` takes no value: write just `temp_dir`",
        )),
    }
}

/// `name = "value"`, with a non-empty string.
fn string_value(meta: &Meta, example: &str) -> syn::Result<LitStr> {
    let name = meta.path().get_ident().expect("checked by the caller");
    match meta {
        Meta::NameValue(name_value) => match &name_value.value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => non_empty(name, lit.clone()),
            other => Err(syn::Error::new_spanned(
                other,
                format!("`{name}` takes a string: `{example}`"),
            )),
        },
        Meta::Path(_) | Meta::List(_) => Err(syn::Error::new_spanned(
            meta,
            format!("`{name}` takes a string: `{example}`"),
        )),
    }
}

/// `name("a", "b")`, with at least one non-empty string.
fn string_list(meta: &Meta, example: &str) -> syn::Result<Vec<LitStr>> {
    let name = meta.path().get_ident().expect("checked by the caller");
    let Meta::List(list) = meta else {
        return Err(syn::Error::new_spanned(
            meta,
            format!("`{name}` takes a list of strings: `{example}`"),
        ));
    };
    let lits = list
        .parse_args_with(Punctuated::<LitStr, Token![,]>::parse_terminated)
        .map_err(|error| {
            syn::Error::new(
                error.span(),
                format!("{error}; `{name}` takes a list of strings: `{example}`"),
            )
        })?;
    if lits.is_empty() {
        return Err(syn::Error::new_spanned(
            meta,
            format!("`{name}(..)` needs at least one string: `{example}`; or leave `{name}` out"),
        ));
    }
    lits.into_iter().map(|lit| non_empty(name, lit)).collect()
}

fn non_empty(name: &syn::Ident, lit: LitStr) -> syn::Result<LitStr> {
    if lit.value().is_empty() {
        Err(syn::Error::new(
            lit.span(),
            format!("`{name}` cannot be an empty string"),
        ))
    } else {
        Ok(lit)
    }
}

/// A path relative to the user's crate root, evaluated in the user's crate.
fn crate_path(lit: &LitStr) -> TokenStream2 {
    quote_spanned! {lit.span()=>
        ::std::path::Path::new(::core::env!("CARGO_MANIFEST_DIR")).join(#lit)
    }
}

fn generate(options: &Options, item_fn: &ItemFn, param: &syn::PatType) -> TokenStream2 {
    let mut builder = quote!(::pglite_harness::PgliteDb::builder());
    if let Some(span) = options.temp_dir {
        builder.extend(quote_spanned!(span=> .temp_dir()));
    }
    if let Some(extensions) = &options.extensions {
        for extension in extensions {
            builder.extend(quote_spanned!(extension.span()=> .extension(#extension)));
        }
    }
    if let Some(migrations) = &options.migrations {
        let path = crate_path(migrations);
        builder.extend(quote_spanned!(migrations.span()=> .migrations(#path)));
    }
    if let Some(fixtures) = &options.fixtures {
        for fixture in fixtures {
            let path = crate_path(fixture);
            builder.extend(quote_spanned!(fixture.span()=> .fixture(#path)));
        }
    }
    if let Some(user) = &options.user {
        builder.extend(quote_spanned!(user.span()=> .user(#user)));
    }
    if let Some(database) = &options.database {
        builder.extend(quote_spanned!(database.span()=> .database(#database)));
    }

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item_fn;
    let name = &sig.ident;
    let output = &sig.output;
    let fn_token = &sig.fn_token;
    let syn::PatType {
        attrs: param_attrs,
        pat,
        colon_token,
        ty,
    } = param;
    let closure_param = quote!(#(#param_attrs)* #pat #colon_token #ty);
    let call = if sig.asyncness.is_some() {
        quote! {
            ::pglite_harness::__private::run_async_test(#builder, |#closure_param| async move #block)
        }
    } else {
        // The closure's return type is written out so that `?` in the body knows what to convert to.
        let closure_output = match output {
            ReturnType::Type(_, ty) if !contains_impl_trait(ty) => quote!(-> #ty),
            ReturnType::Type(..) => quote!(),
            ReturnType::Default => quote!(-> ()),
        };
        quote! {
            ::pglite_harness::__private::run_sync_test(#builder, |#closure_param| #closure_output #block)
        }
    };
    quote! {
        #[::core::prelude::v1::test]
        #(#attrs)*
        #vis #fn_token #name() #output {
            #call
        }
    }
}

/// `impl Trait` cannot be written as a closure's return type.
fn contains_impl_trait(ty: &Type) -> bool {
    fn any_impl(tokens: TokenStream2) -> bool {
        tokens.into_iter().any(|token| match token {
            proc_macro2::TokenTree::Ident(ident) => ident == "impl",
            proc_macro2::TokenTree::Group(group) => any_impl(group.stream()),
            _ => false,
        })
    }
    any_impl(ty.to_token_stream())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token streams print `>>` as `>>` or `> >` depending on how they were made: compare without
    /// whitespace.
    fn squeeze(tokens: &TokenStream2) -> String {
        tokens.to_string().split_whitespace().collect()
    }

    fn expands_to(attr: TokenStream2, item: TokenStream2, expected: TokenStream2) {
        let actual = expand(attr, item);
        assert_eq!(
            squeeze(&actual),
            squeeze(&expected),
            "\nactual:   {actual}\nexpected: {expected}"
        );
    }

    fn errors(attr: TokenStream2, item: TokenStream2) -> String {
        let actual = expand(attr, item).to_string();
        assert!(actual.contains("compile_error"), "no error in {actual}");
        actual
    }

    #[test]
    fn plain_async() {
        expands_to(
            quote!(),
            quote! {
                async fn creates_users(db: PgliteDb) {
                    let pool = connect(db.url()).await;
                }
            },
            quote! {
                #[::core::prelude::v1::test]
                fn creates_users() {
                    ::pglite_harness::__private::run_async_test(
                        ::pglite_harness::PgliteDb::builder(),
                        |db: PgliteDb| async move {
                            let pool = connect(db.url()).await;
                        }
                    )
                }
            },
        );
    }

    #[test]
    fn sync() {
        expands_to(
            quote!(),
            quote! {
                fn sync_test(db: pglite_harness::PgliteDb) { query(&db); }
            },
            quote! {
                #[::core::prelude::v1::test]
                fn sync_test() {
                    ::pglite_harness::__private::run_sync_test(
                        ::pglite_harness::PgliteDb::builder(),
                        |db: pglite_harness::PgliteDb| -> () { query(&db); }
                    )
                }
            },
        );
    }

    #[test]
    fn all_options() {
        let root = quote!(::core::env!("CARGO_MANIFEST_DIR"));
        expands_to(
            quote! {
                fixtures("users.sql", "orders.sql"),
                extensions("hstore", "pg_trgm"),
                user = "app",
                database = "shop",
                migrations = "migrations",
                temp_dir,
            },
            quote! {
                async fn with_everything(db: PgliteDb) {}
            },
            quote! {
                #[::core::prelude::v1::test]
                fn with_everything() {
                    ::pglite_harness::__private::run_async_test(
                        ::pglite_harness::PgliteDb::builder()
                            .temp_dir()
                            .extension("hstore")
                            .extension("pg_trgm")
                            .migrations(::std::path::Path::new(#root).join("migrations"))
                            .fixture(::std::path::Path::new(#root).join("users.sql"))
                            .fixture(::std::path::Path::new(#root).join("orders.sql"))
                            .user("app")
                            .database("shop"),
                        |db: PgliteDb| async move {}
                    )
                }
            },
        );
    }

    #[test]
    fn single_options() {
        let builder = |attr: TokenStream2| {
            let expanded = expand(
                attr,
                quote!(
                    async fn t(db: PgliteDb) {}
                ),
            )
            .to_string();
            let start = expanded.find("builder ()").expect("a builder") + "builder ()".len();
            let end = expanded.find(", | db").expect("a closure");
            expanded[start..end].trim().to_owned()
        };
        assert_eq!(builder(quote!()), "");
        assert_eq!(builder(quote!(temp_dir)), ". temp_dir ()");
        assert_eq!(builder(quote!(user = "app")), ". user (\"app\")");
        assert_eq!(builder(quote!(database = "shop",)), ". database (\"shop\")");
        assert_eq!(builder(quote!(extensions("hstore"))), ". extension (\"hstore\")");
        let path = quote!(::std::path::Path::new(::core::env!("CARGO_MANIFEST_DIR")).join("db/migrations"));
        assert_eq!(
            builder(quote!(migrations = "db/migrations")),
            quote!(.migrations(#path)).to_string()
        );
    }

    #[test]
    fn attributes_and_visibility_preserved() {
        expands_to(
            quote!(temp_dir),
            quote! {
                /// Checks that the data survives.
                #[should_panic(expected = "gone")]
                #[ignore = "slow"]
                #[cfg(feature = "slow")]
                #[allow(unused_mut)]
                pub(crate) async fn survives_restart(mut db: PgliteDb) {
                    db.restart().await.unwrap();
                }
            },
            quote! {
                #[::core::prelude::v1::test]
                #[doc = r" Checks that the data survives."]
                #[should_panic(expected = "gone")]
                #[ignore = "slow"]
                #[cfg(feature = "slow")]
                #[allow(unused_mut)]
                pub(crate) fn survives_restart() {
                    ::pglite_harness::__private::run_async_test(
                        ::pglite_harness::PgliteDb::builder().temp_dir(),
                        |mut db: PgliteDb| async move {
                            db.restart().await.unwrap();
                        }
                    )
                }
            },
        );
    }

    #[test]
    fn return_type_preserved() {
        expands_to(
            quote!(),
            quote! {
                async fn fallible(db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
                    if db.url().is_empty() {
                        return Ok(());
                    }
                    run(&db).await?;
                    Ok(())
                }
            },
            quote! {
                #[::core::prelude::v1::test]
                fn fallible() -> Result<(), Box<dyn std::error::Error>> {
                    ::pglite_harness::__private::run_async_test(
                        ::pglite_harness::PgliteDb::builder(),
                        |db: PgliteDb| async move {
                            if db.url().is_empty() {
                                return Ok(());
                            }
                            run(&db).await?;
                            Ok(())
                        }
                    )
                }
            },
        );
        // Sync: the closure states the return type, for `?`.
        expands_to(
            quote!(),
            quote! {
                fn fallible(db: PgliteDb) -> Result<(), String> { run(&db)?; Ok(()) }
            },
            quote! {
                #[::core::prelude::v1::test]
                fn fallible() -> Result<(), String> {
                    ::pglite_harness::__private::run_sync_test(
                        ::pglite_harness::PgliteDb::builder(),
                        |db: PgliteDb| -> Result<(), String> { run(&db)?; Ok(()) }
                    )
                }
            },
        );
        // `impl Trait` cannot be a closure's return type: left to inference.
        let expanded = expand(
            quote!(),
            quote!(
                fn opaque(db: PgliteDb) -> impl std::process::Termination {}
            ),
        );
        assert!(
            expanded
                .to_string()
                .contains("fn opaque () -> impl std :: process :: Termination"),
            "{expanded}"
        );
        assert!(
            expanded.to_string().contains("| db : PgliteDb | { }"),
            "{expanded}"
        );
    }

    #[test]
    fn pattern_kept_as_written() {
        for (param, closure) in [
            (quote!(mut db: PgliteDb), quote!(|mut db: PgliteDb|)),
            (quote!(_db: PgliteDb), quote!(|_db: PgliteDb|)),
            (quote!(_: PgliteDb), quote!(|_: PgliteDb|)),
            (
                quote!(#[allow(unused)] db: crate::support::PgliteDb),
                quote!(|#[allow(unused)] db: crate::support::PgliteDb|),
            ),
        ] {
            let expanded = expand(quote!(), quote!(fn t(#param) {})).to_string();
            assert!(expanded.contains(&closure.to_string()), "{expanded}");
        }
    }

    #[test]
    fn refusals() {
        // Signature mistakes: only the error, no half-made test.
        for item in [
            quote!(
                async fn t() {}
            ),
            quote!(
                async fn t(db: PgliteDb, other: PgliteDb) {}
            ),
            quote!(
                async fn t(db: String) {}
            ),
            quote!(
                async fn t(db: &PgliteDb) {}
            ),
            quote!(
                async fn t(db: Option<PgliteDb>) {}
            ),
            quote!(
                async fn t(db: PgliteDb<'static>) {}
            ),
            quote!(
                fn t(&self, db: PgliteDb) {}
            ),
            quote!(
                fn t<T>(db: PgliteDb) {}
            ),
            quote!(
                fn t(db: PgliteDb)
                where
                    u8: Copy,
                {
                }
            ),
            quote!(
                const fn t(db: PgliteDb) {}
            ),
            quote!(
                unsafe fn t(db: PgliteDb) {}
            ),
            quote!(
                extern "C" fn t(db: PgliteDb) {}
            ),
            quote!(
                #[test]
                fn t(db: PgliteDb) {}
            ),
            quote!(
                #[tokio::test]
                async fn t(db: PgliteDb) {}
            ),
        ] {
            let expanded = errors(quote!(), item);
            assert!(!expanded.contains("run_"), "{expanded}");
        }
        // Option mistakes.
        for (attr, message) in [
            (quote!(tempdir), "did you mean `temp_dir`"),
            (quote!(fixture("a.sql")), "did you mean `fixtures(..)`"),
            (quote!(foo::bar), "unknown #[pglite_test] option"),
            (quote!(temp_dir = true), "`temp_dir` takes no value"),
            (quote!(temp_dir()), "`temp_dir` takes no value"),
            (quote!(migrations), "`migrations` takes a string"),
            (quote!(migrations("m")), "`migrations` takes a string"),
            (quote!(migrations = 5), "`migrations` takes a string"),
            (quote!(user = app), "`user` takes a string"),
            (quote!(database = ""), "`database` cannot be an empty string"),
            (quote!(fixtures = "a.sql"), "`fixtures` takes a list of strings"),
            (quote!(fixtures), "`fixtures` takes a list of strings"),
            (
                quote!(fixtures("a.sql", "")),
                "`fixtures` cannot be an empty string",
            ),
            (quote!(extensions()), "`extensions(..)` needs at least one string"),
            (quote!(extensions(hstore)), "`extensions` takes a list of strings"),
            (quote!(temp_dir, temp_dir), "`temp_dir` is given twice"),
            (quote!(user = "a", user = "b"), "`user` is given twice"),
            (
                quote!(extensions("a"), extensions("b")),
                "list them all in one `extensions(..)`",
            ),
            (quote!("a.sql"), "options are"),
            (quote!(temp_dir;), "options are"),
        ] {
            let expanded = errors(
                attr.clone(),
                quote!(
                    async fn t(db: PgliteDb) {}
                ),
            );
            assert!(expanded.contains(message), "{attr}: {expanded}");
            assert!(!expanded.contains("run_"), "{expanded}");
        }
    }

    #[test]
    fn every_mistake_reported_at_once() {
        let expanded = errors(
            quote!(tempdir, user),
            quote!(
                fn t<T>(db: u32) {}
            ),
        );
        assert_eq!(expanded.matches("compile_error").count(), 4, "{expanded}");
    }

    #[test]
    fn non_function_kept_as_is() {
        let expanded = errors(
            quote!(),
            quote!(
                struct Fixture {
                    db: u8,
                }
            ),
        );
        assert!(expanded.contains("goes on a test function"), "{expanded}");
        assert!(
            expanded.ends_with(
                &quote!(
                    struct Fixture {
                        db: u8,
                    }
                )
                .to_string()
            ),
            "{expanded}"
        );
    }
}
