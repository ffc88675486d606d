//! Herald's web app and the wire protocol it shares with the server.
//!
//! - [`protocol`]: every frame and error code on the wire (used by server and browser).
//! - [`state`]: the page's reactive state and the pure rules that update it.
//! - `client` (browser only): the WebSocket client with reconnect, backoff and resume.
//! - `auth` (browser only): the stored token, the development sign-in, refreshes.
//! - [`inbox`]: the signed-in user's inbox in the page, and its rules.
//! - [`chat`]: chat rooms in the page: messages, members, typing, messages on their way.
//! - [`components`]: the notification center and the inbox.

pub mod chat;
pub mod components;
pub mod inbox;
pub mod protocol;
pub mod state;
pub mod time;

#[cfg(feature = "hydrate")]
pub mod auth;
#[cfg(feature = "hydrate")]
pub mod client;
#[cfg(feature = "hydrate")]
pub mod desktop;

use components::NotificationCenter;
use leptos::prelude::*;
use leptos_meta::{provide_meta_context, HashedStylesheet, MetaTags, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::StaticSegment;

/// Notifications per topic that the page renders on load.
pub const HISTORY_PAGE: usize = 50;
/// Cookie naming the topics a browser follows, so the server can render their history.
pub const TOPICS_COOKIE: &str = "herald_topics";
/// The topic everybody follows by default.
pub const DEFAULT_TOPIC: &str = "general";

/// Loads one topic's recent history on the server, for the server-rendered page.
#[cfg(feature = "ssr")]
pub type HistoryLoader = std::sync::Arc<
    dyn Fn(
            String,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<protocol::HistoryPage>> + Send>,
        > + Send
        + Sync,
>;

pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                <HashedStylesheet options=options.clone() id="leptos"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Title text="Herald"/>
        <Router>
            <Routes fallback=|| view! { <p class="not-found">"Page not found."</p> }>
                <Route path=StaticSegment("") view=NotificationCenter/>
                <Route path=StaticSegment("admin") view=components::admin::AdminPage/>
            </Routes>
        </Router>
    }
}
