//! The admin page (`/admin`): what the node is doing, for someone holding an admin API key.
//!
//! The key is typed in once and kept in `sessionStorage` (gone when the tab closes; never in
//! a cookie or a URL). The page reads `GET /api/admin/overview` every two seconds (the same
//! figures as `/metrics`), draws publish and delivery rates from successive readings as
//! small live charts, and manages API keys (`/api/keys`: list, create, revoke).

use crate::protocol::{KeyInfo, NewKey, Overview};
use leptos::prelude::*;
use leptos_meta::Title;

/// Readings kept for the charts (two minutes at one every two seconds).
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const HISTORY: usize = 60;
/// Milliseconds between readings.
#[cfg(feature = "hydrate")]
const EVERY_MS: u32 = 2_000;

/// One reading of the counters, for rates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Reading {
    at_ms: f64,
    published: u64,
    delivered: u64,
}

/// Rates per second between consecutive readings: (publishes, deliveries).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Rate {
    publishes: f64,
    deliveries: f64,
}

#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn rate(a: Reading, b: Reading) -> Rate {
    let secs = ((b.at_ms - a.at_ms) / 1000.0).max(0.001);
    Rate {
        publishes: b.published.saturating_sub(a.published) as f64 / secs,
        deliveries: b.delivered.saturating_sub(a.delivered) as f64 / secs,
    }
}

/// An SVG polyline's points for `values` in a 120 x 32 box (0 at the bottom).
fn sparkline(values: &[f64]) -> String {
    let max = values.iter().copied().fold(1.0_f64, f64::max);
    let n = values.len().max(2) - 1;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = 120.0 * i as f64 / n as f64;
            let y = 31.0 - 30.0 * v / max;
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn per_sec(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}k/s", v / 1000.0)
    } else {
        format!("{v:.0}/s")
    }
}

#[derive(Clone, Copy)]
struct Admin {
    key: RwSignal<Option<String>>,
    overview: RwSignal<Option<Overview>>,
    rates: RwSignal<Vec<Rate>>,
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    last: RwSignal<Option<Reading>>,
    keys: RwSignal<Vec<KeyInfo>>,
    created: RwSignal<Option<NewKey>>,
    error: RwSignal<Option<String>>,
}

#[component]
pub fn AdminPage() -> AnyView {
    let admin = Admin {
        key: RwSignal::new(None),
        overview: RwSignal::new(None),
        rates: RwSignal::new(Vec::new()),
        last: RwSignal::new(None),
        keys: RwSignal::new(Vec::new()),
        created: RwSignal::new(None),
        error: RwSignal::new(None),
    };
    #[cfg(feature = "hydrate")]
    browser::start(admin);
    let draft = RwSignal::new(String::new());
    // The key form works only once the page is hydrated (see `hydrated`).
    let ready = super::hydrated();
    let open = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let k = draft.get_untracked().trim().to_owned();
        if !k.is_empty() {
            #[cfg(feature = "hydrate")]
            browser::remember(&k);
            admin.error.set(None);
            admin.key.set(Some(k));
            draft.set(String::new());
        }
    };
    let forget = move |_| {
        #[cfg(feature = "hydrate")]
        browser::forget();
        admin.key.set(None);
        admin.overview.set(None);
        admin.keys.set(Vec::new());
    };
    view! {
        <Title text="Herald · admin"/>
        <div class="page admin">
            <header class="topbar">
                <div class="brand">
                    <span class="logo" aria-hidden="true">"◆"</span>
                    <span class="name">"Herald admin"</span>
                </div>
                <div class="topbar-right">
                    <a href="/" class="link">"Notification center"</a>
                    <Show when=move || admin.key.get().is_some()>
                        <button class="secondary" on:click=forget>"Forget key"</button>
                    </Show>
                </div>
            </header>
            <main class="admin-main">
                {move || admin.error.get().map(|e| view! { <p class="admin-error" role="alert">{e}</p> })}
                <Show
                    when=move || admin.key.get().is_some()
                    fallback=move || view! {
                        <form class="admin-key card" on:submit=open>
                            <label for="admin-key">"Admin API key"</label>
                            <input id="admin-key" type="password" autocomplete="off" data-testid="admin-key"
                                placeholder="hk_…" prop:value=move || draft.get()
                                disabled=move || !ready.get()
                                on:input=move |ev| draft.set(event_target_value(&ev))/>
                            <button type="submit" disabled=move || !ready.get()>"Open"</button>
                            <p class="hint">"A key with admin:* (herald keys add --allow 'admin:*'). Kept in this tab only."</p>
                        </form>
                    }
                >
                    <Dashboard admin/>
                    <Keys admin/>
                </Show>
            </main>
        </div>
    }
    .into_any()
}

#[component]
fn Dashboard(admin: Admin) -> AnyView {
    let o = move || admin.overview.get().unwrap_or_default();
    let health = move || {
        let o = o();
        match (o.ready, o.draining, o.not_ready) {
            (true, _, _) => ("ok", format!("{} · ready", o.store)),
            (false, true, _) => ("warn", format!("{} · draining", o.store)),
            (false, false, why) => (
                "bad",
                format!(
                    "{} · {}",
                    o.store,
                    why.unwrap_or_else(|| "not ready".into())
                ),
            ),
        }
    };
    view! {
        <section class="stats">
            <div class="card stat">
                <span class="label">"Connections"</span>
                <span class="value" data-testid="admin-connections">{move || o().connections}</span>
                <span class="sub">{move || format!("of {}", o().max_connections)}</span>
            </div>
            <div class="card stat">
                <span class="label">"Subscriptions"</span>
                <span class="value" data-testid="admin-subscriptions">{move || o().subscriptions}</span>
                <span class="sub">{move || format!("{} topics", o().topics)}</span>
            </div>
            <RateCard label="Published" testid="admin-published" total=Signal::derive(move || o().published)
                rates=Signal::derive(move || admin.rates.with(|r| r.iter().map(|x| x.publishes).collect()))/>
            <RateCard label="Delivered" testid="admin-delivered" total=Signal::derive(move || o().delivered)
                rates=Signal::derive(move || admin.rates.with(|r| r.iter().map(|x| x.deliveries).collect()))/>
            <div class="card stat">
                <span class="label">"Slow-consumer cuts"</span>
                <span class="value" data-testid="admin-cuts">{move || o().slow_consumer_cuts}</span>
                <span class="sub">{move || format!("queues: {} frames, longest {}", o().queued_frames, o().queue_depth_max)}</span>
            </div>
            <div class="card stat">
                <span class="label">"Store"</span>
                <span class=move || format!("value health {}", health().0) data-testid="admin-store">{move || health().1}</span>
                <span class="sub">{move || format!("{} writes waiting · v{}", o().store_queued_writes, o().version)}</span>
            </div>
        </section>
        <section class="card">
            <h2>"Busiest topics"</h2>
            <table class="admin-table" data-testid="admin-busiest">
                <thead><tr><th>"Topic"</th><th>"Subscribers here"</th></tr></thead>
                <tbody>
                    <For each=move || o().busiest key=|t| (t.topic.clone(), t.subscribers) let:t>
                        <tr><td>{t.topic}</td><td>{t.subscribers}</td></tr>
                    </For>
                </tbody>
            </table>
        </section>
    }
    .into_any()
}

/// A counter since start, its rate now, and the rate's recent history as a small chart.
#[component]
fn RateCard(
    label: &'static str,
    testid: &'static str,
    total: Signal<u64>,
    rates: Signal<Vec<f64>>,
) -> impl IntoView {
    let now = move || rates.with(|r| r.last().copied().unwrap_or_default());
    view! {
        <div class="card stat">
            <span class="label">{label}</span>
            <span class="value" data-testid=testid>{move || total.get()}</span>
            <span class="sub">{move || per_sec(now())}</span>
            <svg class="spark" viewBox="0 0 120 32" aria-hidden="true">
                <polyline fill="none" stroke="currentColor" stroke-width="1.5" points=move || sparkline(&rates.get())/>
            </svg>
        </div>
    }
}

#[component]
fn Keys(admin: Admin) -> AnyView {
    let name = RwSignal::new(String::new());
    let scopes = RwSignal::new(String::from("publish:*"));
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let allow: Vec<String> = scopes
            .get_untracked()
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        #[cfg(feature = "hydrate")]
        browser::create_key(admin, name.get_untracked(), allow);
        #[cfg(not(feature = "hydrate"))]
        let _ = allow;
        name.set(String::new());
    };
    view! {
        <section class="card">
            <h2>"API keys"</h2>
            {move || admin.created.get().map(|k| view! {
                <p class="created" data-testid="admin-new-key">
                    "New key “" {k.name} "” (shown only now): " <code>{k.key}</code>
                </p>
            })}
            <table class="admin-table" data-testid="admin-keys">
                <thead><tr><th>"Id"</th><th>"Name"</th><th>"Scopes"</th><th>"Created"</th><th></th></tr></thead>
                <tbody>
                    <For each=move || admin.keys.get() key=|k| (k.id.clone(), k.revoked) let:k>
                        {
                            let id = k.id.clone();
                            let revoked = k.revoked.is_some();
                            view! {
                                <tr class:revoked=revoked>
                                    <td><code>{k.id}</code></td>
                                    <td>{k.name}</td>
                                    <td>{k.grants.join(" ")}</td>
                                    <td>{crate::time::format_utc(k.created.saturating_mul(1000))}</td>
                                    <td>
                                        {if revoked {
                                            view! { <span class="muted">"revoked"</span> }.into_any()
                                        } else {
                                            view! {
                                                <button class="secondary" on:click=move |_| {
                                                    #[cfg(feature = "hydrate")]
                                                    browser::revoke_key(admin, id.clone());
                                                    #[cfg(not(feature = "hydrate"))]
                                                    let _ = &id;
                                                }>"Revoke"</button>
                                            }.into_any()
                                        }}
                                    </td>
                                </tr>
                            }
                        }
                    </For>
                </tbody>
            </table>
            <form class="admin-new-key" on:submit=create>
                <input placeholder="name (who uses it)" data-testid="admin-key-name" prop:value=move || name.get()
                    on:input=move |ev| name.set(event_target_value(&ev))/>
                <input placeholder="scopes: publish:ops-* read:*" data-testid="admin-key-scopes" prop:value=move || scopes.get()
                    on:input=move |ev| scopes.set(event_target_value(&ev))/>
                <button type="submit">"Create key"</button>
            </form>
        </section>
    }
    .into_any()
}

#[cfg(feature = "hydrate")]
mod browser {
    //! Fetching, in the browser only.
    use super::*;
    use crate::protocol::{AddKey, ErrorBody};

    const KEY: &str = "herald.admin-key";

    fn storage() -> Option<web_sys::Storage> {
        web_sys::window()?.session_storage().ok().flatten()
    }

    pub fn remember(key: &str) {
        if let Some(s) = storage() {
            let _ = s.set_item(KEY, key);
        }
    }

    pub fn forget() {
        if let Some(s) = storage() {
            let _ = s.remove_item(KEY);
        }
    }

    /// Restores the key and polls while the page is open.
    pub fn start(admin: Admin) {
        Effect::new(move |_| {
            if let Some(k) = storage().and_then(|s| s.get_item(KEY).ok().flatten()) {
                admin.key.set(Some(k));
            }
        });
        // A new key (typed in, or restored): read everything at once.
        Effect::new(move |_| {
            if admin.key.get().is_some() {
                leptos::task::spawn_local(async move {
                    refresh(admin).await;
                    list_keys(admin).await;
                });
            }
        });
        leptos::task::spawn_local(async move {
            loop {
                gloo_timers::future::TimeoutFuture::new(EVERY_MS).await;
                if admin.key.get_untracked().is_some() {
                    refresh(admin).await;
                }
            }
        });
    }

    async fn call(
        admin: Admin,
        req: gloo_net::http::RequestBuilder,
        body: Option<String>,
    ) -> Option<gloo_net::http::Response> {
        let key = admin.key.get_untracked()?;
        let req = req.header("Authorization", &format!("Bearer {key}"));
        let sent = match body {
            Some(b) => match req.header("Content-Type", "application/json").body(b) {
                Ok(r) => r.send().await,
                Err(e) => {
                    admin.error.set(Some(e.to_string()));
                    return None;
                }
            },
            None => req.send().await,
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                admin
                    .error
                    .set(Some(format!("the server is not answering: {e}")));
                return None;
            }
        };
        if !resp.ok() {
            let msg = match resp.json::<ErrorBody>().await {
                Ok(b) => b.error.message,
                Err(_) => format!("HTTP {}", resp.status()),
            };
            admin.error.set(Some(msg));
            if matches!(resp.status(), 401 | 403) {
                forget();
                admin.key.set(None);
            }
            return None;
        }
        admin.error.set(None);
        Some(resp)
    }

    async fn refresh(admin: Admin) {
        let req = gloo_net::http::Request::get("/api/admin/overview");
        let Some(resp) = call(admin, req, None).await else {
            return;
        };
        let Ok(o) = resp.json::<Overview>().await else {
            return;
        };
        let reading = Reading {
            at_ms: js_sys::Date::now(),
            published: o.published,
            delivered: o.delivered,
        };
        if let Some(prev) = admin.last.get_untracked() {
            admin.rates.update(|r| {
                r.push(rate(prev, reading));
                if r.len() > HISTORY {
                    r.remove(0);
                }
            });
        }
        admin.last.set(Some(reading));
        admin.overview.set(Some(o));
    }

    async fn list_keys(admin: Admin) {
        let req = gloo_net::http::Request::get("/api/keys");
        if let Some(resp) = call(admin, req, None).await {
            if let Ok(keys) = resp.json::<Vec<KeyInfo>>().await {
                admin.keys.set(keys);
            }
        }
    }

    pub fn create_key(admin: Admin, name: String, allow: Vec<String>) {
        leptos::task::spawn_local(async move {
            let body = serde_json::to_string(&AddKey { name, allow }).unwrap_or_default();
            let req = gloo_net::http::Request::post("/api/keys");
            if let Some(resp) = call(admin, req, Some(body)).await {
                if let Ok(k) = resp.json::<NewKey>().await {
                    admin.created.set(Some(k));
                }
            }
            list_keys(admin).await;
        });
    }

    pub fn revoke_key(admin: Admin, id: String) {
        leptos::task::spawn_local(async move {
            let req = gloo_net::http::Request::delete(&format!("/api/keys/{id}"));
            call(admin, req, None).await;
            list_keys(admin).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_readings() {
        let a = Reading {
            at_ms: 1000.0,
            published: 10,
            delivered: 100,
        };
        let b = Reading {
            at_ms: 3000.0,
            published: 30,
            delivered: 500,
        };
        assert_eq!(
            rate(a, b),
            Rate {
                publishes: 10.0,
                deliveries: 200.0
            }
        );
        // A restart (counters back to zero) is not a negative rate.
        assert_eq!(rate(b, a).publishes, 0.0);
    }

    #[test]
    fn a_sparkline_spans_the_box() {
        assert_eq!(sparkline(&[0.0, 2.0]), "0.0,31.0 120.0,1.0");
    }
}
