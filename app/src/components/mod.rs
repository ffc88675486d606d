//! The notification center page: header (connection state, unread bell), followed topics,
//! the live list, a publish form and toasts.

pub mod admin;
mod chat;
mod inbox;
mod publish;

use crate::protocol::{validate_topic, Notification};
use crate::state::{Center, ToastKind};
use crate::time::format_utc;
use chat::ChatPanel;
use inbox::{InboxBell, InboxPanel};
use leptos::prelude::*;
use leptos_meta::Title;
use publish::PublishForm;
use serde::{Deserialize, Serialize};

/// What the server renders before the socket connects: the followed topics and their
/// recent history.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InitialView {
    pub topics: Vec<String>,
    pub notifications: Vec<Notification>,
}

/// What the server needs to render the initial view; empty in the browser, which hydrates
/// from the serialized resource instead of loading anything.
#[derive(Clone)]
struct Loader {
    #[cfg(feature = "ssr")]
    load: Option<crate::HistoryLoader>,
    #[cfg(feature = "ssr")]
    topics: Vec<String>,
}

#[cfg(feature = "ssr")]
fn loader() -> Loader {
    let topics = use_context::<http::request::Parts>()
        .and_then(|parts| {
            let cookies = parts
                .headers
                .get(http::header::COOKIE)?
                .to_str()
                .ok()?
                .to_owned();
            cookies.split(';').find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == crate::TOPICS_COOKIE).then(|| v.to_owned())
            })
        })
        .map(|raw| crate::state::parse_topics(&raw))
        .unwrap_or_else(|| vec![crate::DEFAULT_TOPIC.to_owned()]);
    Loader {
        load: use_context::<crate::HistoryLoader>(),
        topics,
    }
}

#[cfg(not(feature = "ssr"))]
fn loader() -> Loader {
    Loader {}
}

#[cfg(feature = "ssr")]
async fn load_initial(loader: Loader) -> InitialView {
    let mut items = Vec::new();
    if let Some(load) = &loader.load {
        for t in &loader.topics {
            for n in load(t.clone())
                .await
                .map(|p| p.notifications)
                .unwrap_or_default()
            {
                crate::state::insert(&mut items, n);
            }
        }
    }
    InitialView {
        topics: loader.topics,
        notifications: items,
    }
}

#[cfg(not(feature = "ssr"))]
async fn load_initial(_: Loader) -> InitialView {
    InitialView {
        topics: vec![crate::DEFAULT_TOPIC.to_owned()],
        notifications: Vec::new(),
    }
}

#[component]
pub fn NotificationCenter() -> impl IntoView {
    let ctx = loader();
    let initial = Resource::new(|| (), move |_| load_initial(ctx.clone()));
    view! {
        <Suspense fallback=|| view! { <div class="loading">"Loading…"</div> }>
            {move || Suspend::new(async move {
                let init = initial.await;
                view! { <CenterView init/> }
            })}
        </Suspense>
    }
}

/// A handle to the running WebSocket client (browser only).
#[derive(Clone)]
struct ClientHandle(
    #[cfg(feature = "hydrate")] StoredValue<Option<crate::client::Client>, LocalStorage>,
    #[cfg(not(feature = "hydrate"))] (),
);

impl ClientHandle {
    #[cfg(feature = "hydrate")]
    fn command(&self, c: crate::client::Command) {
        if let Some(client) = self.0.get_value() {
            client.send(c);
        }
    }

    #[cfg(feature = "hydrate")]
    fn subscribe(&self, topic: &str, center: Center) {
        if let Some(c) = self.0.get_value() {
            c.send(crate::client::Command::Subscribe(topic.to_owned()));
        }
        if crate::client::history_now(center, topic) {
            crate::client::refetch(center, topic.to_owned());
        }
        crate::client::save_topics(&center.topics.get_untracked());
    }
    #[cfg(not(feature = "hydrate"))]
    fn subscribe(&self, _: &str, _: Center) {}

    #[cfg(feature = "hydrate")]
    fn unsubscribe(&self, topic: &str, center: Center) {
        if let Some(c) = self.0.get_value() {
            c.send(crate::client::Command::Unsubscribe(topic.to_owned()));
        }
        crate::client::save_topics(&center.topics.get_untracked());
    }
    #[cfg(not(feature = "hydrate"))]
    fn unsubscribe(&self, _: &str, _: Center) {}
}

/// The time the page's relative times count from: `None` on the server and until the page
/// is live, so the server-rendered text (UTC) and the hydrated one agree; then the browser's
/// clock, every 30 seconds.
#[derive(Clone, Copy)]
struct Clock(RwSignal<Option<i64>>);

/// A time as people read it: "2 min ago" when recent, else the date and time in the reader's
/// own time zone (full local time on hover).
#[component]
fn When(ms: i64) -> impl IntoView {
    let clock = expect_context::<Clock>().0;
    let text = move || match clock.get() {
        None => format_utc(ms),
        Some(now) => crate::time::relative(ms, now).unwrap_or_else(|| local_time(ms)),
    };
    let title = move || match clock.get() {
        None => format_utc(ms),
        Some(_) => local_time(ms),
    };
    view! { <time class="time" title=title>{text}</time> }
}

fn local_time(ms: i64) -> String {
    #[cfg(feature = "hydrate")]
    {
        let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ms as f64));
        date.to_locale_string("default", &wasm_bindgen::JsValue::UNDEFINED)
            .into()
    }
    #[cfg(not(feature = "hydrate"))]
    format_utc(ms)
}

/// The page title: the inbox's unread count (the server's, the same in every tab) first,
/// as mail and chat apps show it.
fn page_title(unread: u64) -> String {
    if unread == 0 {
        "Herald".to_owned()
    } else {
        format!("({unread}) Herald")
    }
}

#[component]
fn CenterView(init: InitialView) -> impl IntoView {
    let center = Center::new(init.topics, init.notifications);
    provide_context(center);
    let clock = Clock(RwSignal::new(None));
    provide_context(clock);
    #[cfg(feature = "hydrate")]
    Effect::new(move |started: Option<()>| {
        if started.is_some() {
            return;
        }
        leptos::task::spawn_local(async move {
            loop {
                clock.0.set(Some(js_sys::Date::now() as i64));
                gloo_timers::future::TimeoutFuture::new(30_000).await;
            }
        });
    });
    let inbox = center.inbox;
    let chat = center.chat;
    // A clicked desktop notification opens the inbox at its item.
    Effect::new(move |_| {
        if inbox.focus.get().is_some() {
            inbox.open.set(true);
        }
    });

    #[cfg(feature = "hydrate")]
    let client = {
        let handle = StoredValue::new_local(None);
        Effect::new(move |_| {
            if handle.with_value(Option::is_some) {
                return;
            }
            // Topics the browser remembers win over the server's guess (cookie or default).
            let mut unrendered = Vec::new();
            if let Some(saved) = crate::client::load_topics() {
                if saved != center.topics.get_untracked() {
                    center.topics.set(saved.clone());
                    unrendered = saved;
                }
            }
            crate::client::save_topics(&center.topics.get_untracked());
            // Started first: it loads the positions `history_now` asks about.
            handle.set_value(Some(crate::client::start(center)));
            for t in unrendered {
                if crate::client::history_now(center, &t) {
                    crate::client::refetch(center, t);
                }
            }
        });
        ClientHandle(handle)
    };
    #[cfg(not(feature = "hydrate"))]
    let client = ClientHandle(());
    provide_context(client);

    let list_ref = NodeRef::<leptos::html::Section>::new();
    let open_list = move |_| {
        center.mark_read();
        #[cfg(feature = "hydrate")]
        if let Some(el) = list_ref.get_untracked() {
            el.scroll_into_view();
        }
    };

    view! {
        <Title text=move || page_title(inbox.unread.get())/>
        <div class="app">
            <header class="topbar">
                <div class="brand">
                    <span class="logo" aria-hidden="true">"◆"</span>
                    <span class="name">"Herald"</span>
                </div>
                <div class="topbar-right">
                    <SignIn/>
                    <InboxBell/>
                    <span class=move || center.conn.get().class() data-testid="conn-state" role="status">
                        <span class="dot" aria-hidden="true"></span>
                        {move || center.conn.get().label()}
                    </span>
                    <button class="bell" data-testid="bell" on:click=open_list
                        aria-label=move || format!("{} unread notifications", center.unread.get())>
                        <svg class="bell-icon" viewBox="0 0 24 24" width="18" height="18" aria-hidden="true"
                            fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">
                            <path d="M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9"/>
                            <path d="M13.73 21a2 2 0 0 1-3.46 0"/>
                        </svg>
                        <Show when=move || { center.unread.get() > 0 }>
                            <span class="badge" data-testid="unread">{move || center.unread.get()}</span>
                        </Show>
                    </button>
                </div>
            </header>
            <main class="layout">
                <aside class="sidebar">
                    <TopicManager/>
                    <PublishForm/>
                </aside>
                <section class="panel list-panel" node_ref=list_ref>
                    <div class="tabs" role="tablist">
                        <button role="tab" class="tab" data-testid="tab-topics"
                            aria-selected=move || (!inbox.open.get() && !chat.open.get()).to_string()
                            on:click=move |_| { inbox.open.set(false); chat.open.set(false); }>"Topics"</button>
                        <Show when=move || center.user.get().is_some()>
                            <button role="tab" class="tab" data-testid="tab-inbox"
                                aria-selected=move || (inbox.open.get() && !chat.open.get()).to_string()
                                on:click=move |_| { chat.open.set(false); inbox.open.set(true); }>
                                "Inbox"
                                <Show when=move || { inbox.unread.get() > 0 }>
                                    " (" {move || inbox.unread.get()} ")"
                                </Show>
                            </button>
                            <button role="tab" class="tab" data-testid="tab-chat"
                                aria-selected=move || chat.open.get().to_string()
                                on:click=move |_| chat.open.set(true)>"Chat"</button>
                        </Show>
                    </div>
                    <Show when=move || chat.open.get() && center.user.get().is_some()>
                        <ChatPanel/>
                    </Show>
                    <Show
                        when=move || !chat.open.get() || center.user.get().is_none()
                        fallback=|| ()
                    >
                    <Show
                        when=move || inbox.open.get() && center.user.get().is_some()
                        fallback=move || view! {
                            <div on:click=move |_| center.mark_read()>
                                <div class="panel-head">
                                    <h2>"Notifications"</h2>
                                    <button class="link-button" data-testid="mark-read" on:click=move |_| center.mark_read()>
                                        "Mark all read"
                                    </button>
                                </div>
                                <NotificationList/>
                            </div>
                        }
                    >
                        <InboxPanel/>
                    </Show>
                    </Show>
                </section>
            </main>
            <Toasts/>
        </div>
    }
}

/// False until the page is hydrated: an effect runs only in the browser, after hydration.
/// Forms rendered on the server stay disabled until then, since what is typed into them
/// before would be reset by hydration, and submitting would send a plain form (a reload).
pub fn hydrated() -> RwSignal<bool> {
    let ready = RwSignal::new(false);
    Effect::new(move |_| ready.set(true));
    ready
}

/// Who is signed in, or a sign-in by user name (development mode's stand-in for the
/// customer's own login, which would hand the page a token).
#[component]
fn SignIn() -> impl IntoView {
    let center = expect_context::<Center>();
    let client = expect_context::<ClientHandle>();
    let name = RwSignal::new(String::new());
    let problem = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let ready = hydrated();
    let in_client = client.clone();
    let sign_in = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let user = name.get_untracked().trim().to_owned();
        if let Err(e) = validate_topic(&user) {
            problem.set(Some(e.message.replace("topic", "user name")));
            return;
        }
        #[cfg(feature = "hydrate")]
        {
            let client = in_client.clone();
            busy.set(true);
            leptos::task::spawn_local(async move {
                match crate::auth::sign_in(&user).await {
                    Ok(c) => {
                        problem.set(None);
                        center.user.set(Some(c.user));
                        client.command(crate::client::Command::SignedIn);
                    }
                    Err(e) => problem.set(Some(e)),
                }
                busy.set(false);
            });
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = (&in_client, busy, user);
    };
    let sign_out = move |_| {
        #[cfg(feature = "hydrate")]
        {
            crate::auth::clear();
            center.user.set(None);
            client.command(crate::client::Command::SignOut);
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = &client;
    };
    view! {
        <Show
            when=move || center.user.get().is_some()
            fallback=move || view! {
                <form class="sign-in" data-testid="sign-in" on:submit=sign_in.clone()>
                    <input type="text" placeholder="your name" aria-label="User name"
                        data-testid="sign-in-name" bind:value=name maxlength="64"
                        disabled=move || !ready.get()/>
                    <button type="submit" class="button secondary" data-testid="sign-in-submit"
                        disabled=move || busy.get() || !ready.get()>"Sign in"</button>
                    <Show when=move || problem.get().is_some()>
                        <span class="form-error" role="alert">{move || problem.get().unwrap_or_default()}</span>
                    </Show>
                </form>
            }
        >
            <span class="signed-in" data-testid="signed-in">
                {move || center.user.get().unwrap_or_default()}
            </span>
            <button class="link-button" data-testid="sign-out" on:click=sign_out.clone()>"Sign out"</button>
        </Show>
    }
}

#[component]
fn TopicManager() -> impl IntoView {
    let center = expect_context::<Center>();
    let client = expect_context::<ClientHandle>();
    let draft = RwSignal::new(String::new());
    let ready = hydrated();
    let problem = RwSignal::new(None::<String>);
    let add_client = client.clone();
    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let topic = draft.get_untracked().trim().to_owned();
        if let Err(e) = validate_topic(&topic) {
            problem.set(Some(e.message));
            return;
        }
        problem.set(None);
        draft.set(String::new());
        if center.topics.get_untracked().contains(&topic) {
            return;
        }
        center.topics.update(|t| t.push(topic.clone()));
        add_client.subscribe(&topic, center);
    };
    view! {
        <section class="panel">
            <h2>"Topics"</h2>
            <ul class="topics" data-testid="topics">
                <For
                    each=move || center.topics.get()
                    key=|t| t.clone()
                    children=move |topic: String| {
                        let client = client.clone();
                        let t = topic.clone();
                        let remove = move |_| {
                            center.topics.update(|ts| ts.retain(|x| *x != t));
                            center.items.update(|items| items.retain(|n| n.topic != t));
                            client.unsubscribe(&t, center);
                        };
                        view! {
                            <li class="topic">
                                <span class="topic-name">"#" {topic.clone()}</span>
                                <button class="icon-button" on:click=remove
                                    aria-label=format!("Stop following {topic}")>"×"</button>
                            </li>
                        }
                    }
                />
            </ul>
            <form class="inline-form" on:submit=add>
                <input type="text" placeholder="add a topic" aria-label="Topic to follow"
                    data-testid="topic-input" bind:value=draft maxlength="64"
                    disabled=move || !ready.get()/>
                <button type="submit" class="button secondary" disabled=move || !ready.get()>"Follow"</button>
            </form>
            <Show when=move || problem.get().is_some()>
                <p class="form-error">{move || problem.get().unwrap_or_default()}</p>
            </Show>
        </section>
    }
}

fn priority_label(p: u8) -> &'static str {
    match p {
        1 => "min",
        2 => "low",
        3 => "default",
        4 => "high",
        _ => "urgent",
    }
}

#[component]
fn NotificationList() -> impl IntoView {
    let center = expect_context::<Center>();
    view! {
        <Show when=move || center.items.with(|i| i.is_empty())>
            <p class="empty" data-testid="empty">
                "Nothing yet. Publish with the form, or: "
                <code>"curl -d \"Deploy finished\" "{move || format!("{}/api/topics/{}", origin(), center.topics.with(|t| t.first().cloned().unwrap_or_default()))}</code>
            </p>
        </Show>
        <ol class="notifications" data-testid="notifications">
            <For
                each=move || center.items.get()
                key=|n| (n.topic.clone(), n.epoch.clone(), n.offset)
                children=move |n: Notification| view! { <NotificationItem n/> }
            />
        </ol>
    }
}

fn origin() -> String {
    #[cfg(feature = "hydrate")]
    if let Some(o) = web_sys::window().and_then(|w| w.location().origin().ok()) {
        return o;
    }
    "http://127.0.0.1:3000".to_owned()
}

#[component]
fn NotificationItem(n: Notification) -> impl IntoView {
    let class = format!("notification prio-{}", n.priority);
    let tags = n.tags.clone();
    view! {
        <li class=class data-testid="notification" data-topic=n.topic.clone() data-offset=n.offset>
            <div class="meta">
                <span class="chip topic-chip">"#" {n.topic.clone()}</span>
                <span class=format!("chip prio prio-chip-{}", n.priority) title="priority">
                    {format!("P{} {}", n.priority, priority_label(n.priority))}
                </span>
                <When ms=n.time/>
            </div>
            {n.title.clone().map(|t| view! { <h3 class="title">{t}</h3> })}
            <p class="body">{n.body.clone()}</p>
            <div class="foot">
                {tags.into_iter().map(|t| view! { <span class="chip tag">{t}</span> }).collect_view()}
                {n.link.clone().map(|l| view! { <a class="open-link" href=l.clone() rel="noopener noreferrer" target="_blank">"Open link"</a> })}
            </div>
        </li>
    }
}

#[component]
fn Toasts() -> impl IntoView {
    let center = expect_context::<Center>();
    view! {
        <div class="toasts" aria-live="polite" data-testid="toasts">
            <For
                each=move || center.toasts.get()
                key=|t| t.id
                children=move |t| {
                    let kind = match t.kind {
                        ToastKind::Notification => "toast",
                        ToastKind::Notice => "toast notice",
                        ToastKind::Error => "toast error",
                    };
                    let id = t.id;
                    view! {
                        <div class=format!("{kind} prio-{}", t.priority) data-testid="toast" role="status">
                            <div class="toast-text">
                                <strong>{t.title}</strong>
                                <span>{t.body}</span>
                            </div>
                            <button class="icon-button" aria-label="Dismiss" on:click=move |_| center.dismiss(id)>"×"</button>
                        </div>
                    }
                }
            />
        </div>
    }
}
