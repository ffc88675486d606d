//! Desktop notifications through the browser's Notification API, for inbox arrivals while
//! the tab is in the background. Permission is asked only from a button (never on load);
//! clicking a notification focuses the tab and opens the item in the inbox.

use crate::state::Center;
use leptos::prelude::*;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use web_sys::{Notification, NotificationOptions, NotificationPermission};

/// What the browser says about desktop notifications: `None` where they are not supported.
pub fn permission() -> Option<NotificationPermission> {
    let window = web_sys::window()?;
    // Older browsers and some webviews have no Notification at all.
    let supported = js_sys::Reflect::has(&window, &"Notification".into()).unwrap_or(false);
    supported.then(Notification::permission)
}

/// Asks for permission (call from a click); resolves with the answer.
pub async fn request() -> Option<NotificationPermission> {
    permission()?;
    let promise = Notification::request_permission().ok()?;
    wasm_bindgen_futures::JsFuture::from(promise).await.ok()?;
    permission()
}

/// Shows a desktop notification for inbox item `offset` if the tab is hidden and the user
/// allowed them.
pub fn notify(center: Center, title: &str, body: &str, offset: u64) {
    let hidden = web_sys::window()
        .and_then(|w| w.document())
        .is_some_and(|d| d.hidden());
    if !hidden || permission() != Some(NotificationPermission::Granted) {
        return;
    }
    let options = NotificationOptions::new();
    options.set_body(body);
    options.set_tag(&format!("herald-inbox-{offset}"));
    let Ok(n) = Notification::new_with_options(title, &options) else {
        return;
    };
    let shown = n.clone();
    let click = Closure::<dyn Fn()>::new(move || {
        if let Some(w) = web_sys::window() {
            let _ = w.focus();
        }
        center.inbox.open.set(true);
        center.inbox.focus.set(Some(offset));
        shown.close();
    });
    n.set_onclick(Some(click.as_ref().unchecked_ref()));
    // Lives as long as the notification can be clicked; one small closure per arrival
    // shown while hidden.
    click.forget();
}
