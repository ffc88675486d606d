//! The browser's credentials: a user token kept in `localStorage` (never in a cookie or a
//! URL), the development sign-in that gets one, and the header HTTP calls carry.
//!
//! In development mode the server mints a token for any user name (`POST /api/dev/token`);
//! the same call gets a fresh one when the server says the current one is expiring, or after
//! the connection was closed because it expired. In production that endpoint answers 404:
//! tokens come from the customer's own backend, which signs them with the shared secret.

use serde::{Deserialize, Serialize};

const AUTH_KEY: &str = "herald.auth";

/// What the browser keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub token: String,
    pub user: String,
    /// Unix seconds.
    pub expires_at: i64,
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

pub fn load() -> Option<Credentials> {
    let raw = storage()?.get_item(AUTH_KEY).ok().flatten()?;
    serde_json::from_str(&raw).ok()
}

pub fn save(c: &Credentials) {
    if let (Some(s), Ok(raw)) = (storage(), serde_json::to_string(c)) {
        let _ = s.set_item(AUTH_KEY, &raw);
    }
}

pub fn clear() {
    if let Some(s) = storage() {
        let _ = s.remove_item(AUTH_KEY);
    }
}

/// `Bearer <token>` for HTTP calls, when signed in.
pub fn bearer() -> Option<String> {
    load().map(|c| format!("Bearer {}", c.token))
}

/// Asks the server for a token for `user` (development mode's sign-in, and every refresh).
pub async fn sign_in(user: &str) -> Result<Credentials, String> {
    #[derive(Serialize)]
    struct Req<'a> {
        user: &'a str,
    }
    let resp = gloo_net::http::Request::post("/api/dev/token")
        .json(&Req { user })
        .map_err(|e| e.to_string())?
        .send()
        .await
        .map_err(|e| format!("network error: {e}"))?;
    if resp.status() == 404 {
        return Err("this server takes tokens from your application, not a sign-in by name".into());
    }
    if !resp.ok() {
        return Err(match resp.json::<crate::protocol::ErrorBody>().await {
            Ok(b) => b.error.message,
            Err(_) => format!("HTTP {}", resp.status()),
        });
    }
    let c: Credentials = resp.json().await.map_err(|e| e.to_string())?;
    save(&c);
    Ok(c)
}
