//! Serving the web app like a production site.
//!
//! - **The bundle** (`/pkg/`: wasm, script, stylesheet) is served from the files cargo-leptos
//!   built, precompressed (`cargo leptos build --release --precompress` writes `.br` and `.gz`
//!   beside each file; brotli or gzip is chosen by `Accept-Encoding`, never compressed per
//!   request). With content-hashed names (`hash-files = true`: `herald.<hash>.wasm`, listed in
//!   `hash.txt` beside the binary), a name never changes content, so the files are cached for a
//!   year as `immutable`; without hashes (a development build) they are revalidated each time.
//! - **The page** (HTML) is `no-cache`: always revalidated, so a new release is picked up on the
//!   next visit. It carries a Content-Security-Policy allowing only what the app needs: its own
//!   scripts plus the page's inline hydration script by a per-response nonce, WebAssembly
//!   compilation (`wasm-unsafe-eval`), its own stylesheet, connections to its own origin (the
//!   WebSocket and the API), and no framing (`frame-ancestors 'none'`).
//! - **Every response** gets `X-Content-Type-Options: nosniff` and a `Referrer-Policy`.

use axum::http::{header, HeaderValue};
use axum::Router;
use leptos::config::LeptosOptions;
use std::path::Path;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

/// A year: the longest max-age browsers honour.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Files whose names do not change with their content, and the page itself.
const REVALIDATE: &str = "no-cache";

/// Whether the bundle has content-hashed names: cargo-leptos says so (`LEPTOS_HASH_FILES`
/// when it runs the server), or its hash file is beside the binary.
pub fn hashed_names(hash_file_name: &str) -> bool {
    if let Ok(v) = std::env::var("LEPTOS_HASH_FILES") {
        return v == "true";
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(hash_file_name).exists()))
        .unwrap_or(false)
}

/// `/pkg/`: the bundle, precompressed, with the caching its names allow.
pub fn bundle<S: Clone + Send + Sync + 'static>(options: &LeptosOptions) -> Router<S> {
    let dir = Path::new(options.site_root.as_ref()).join(options.site_pkg_dir.as_ref());
    let caching = if options.hash_files {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let files = ServeDir::new(dir)
        .precompressed_br()
        .precompressed_gzip()
        .call_fallback_on_method_not_allowed(true);
    let pkg = format!("/{}", options.site_pkg_dir);
    Router::new().nest_service(
        &pkg,
        tower::ServiceBuilder::new()
            .layer(SetResponseHeaderLayer::overriding(
                header::CACHE_CONTROL,
                HeaderValue::from_static(caching),
            ))
            .service(files),
    )
}

/// The Content-Security-Policy of a page rendered with `nonce`. In `cargo leptos watch`, the
/// live-reload socket on its own port is allowed too.
pub fn content_security_policy(nonce: &str, reload: Option<&str>) -> String {
    let reload = reload.map(|r| format!(" {r}")).unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self'; img-src 'self' data:; connect-src 'self'{reload}; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// Runs in the context of every rendered page (and the not-found page): sets its CSP with
/// the nonce Leptos put on its inline scripts, and `no-cache`.
pub fn page_headers(reload: Option<String>) -> impl Fn() + Clone + Send + 'static {
    move || {
        let Some(opts) = leptos::prelude::use_context::<leptos_axum::ResponseOptions>() else {
            return;
        };
        if let Some(nonce) = leptos::nonce::use_nonce() {
            let csp = content_security_policy(&nonce, reload.as_deref());
            if let Ok(v) = HeaderValue::from_str(&csp) {
                opts.insert_header(header::CONTENT_SECURITY_POLICY, v);
            }
        }
        opts.insert_header(header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE));
    }
}

/// The live-reload origin the page connects to under `cargo leptos watch` (which sets
/// `LEPTOS_WATCH`); `None` otherwise.
pub fn reload_origin(options: &LeptosOptions) -> Option<String> {
    std::env::var("LEPTOS_WATCH").ok()?;
    let host = options.site_addr.ip();
    Some(format!("ws://{host}:{}", options.reload_port))
}

/// The headers every response gets, unless its handler set its own.
const SECURITY_HEADERS: [(header::HeaderName, HeaderValue); 2] = [
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    ),
];

/// Gives every routed response the [`SECURITY_HEADERS`].
pub fn security_headers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    SECURITY_HEADERS
        .into_iter()
        .fold(router, |router, (name, value)| {
            router.layer(SetResponseHeaderLayer::if_not_present(name, value))
        })
}

/// The [`SECURITY_HEADERS`] for a response that did not go through the router (the front
/// door's, see [`crate::listener::Front`]).
pub fn add_security_headers(headers: &mut axum::http::HeaderMap) {
    for (name, value) in SECURITY_HEADERS {
        headers.entry(name).or_insert(value);
    }
}
