//! The signed-in user's inbox: the bell with the server's unread count, and the list with
//! read state, filters, mark read / unread / all read, archive, and desktop notifications.

use super::{ClientHandle, When};
use crate::inbox::Inbox;
use crate::protocol::{InboxFilter, InboxItem, InboxUpdate};
use crate::state::Center;
use leptos::prelude::*;

impl ClientHandle {
    fn inbox_update(&self, update: InboxUpdate) {
        #[cfg(feature = "hydrate")]
        self.command(crate::client::Command::InboxUpdate(update));
        #[cfg(not(feature = "hydrate"))]
        let _ = update;
    }

    fn inbox_list(&self, more: bool) {
        #[cfg(feature = "hydrate")]
        self.command(crate::client::Command::InboxList { more });
        #[cfg(not(feature = "hydrate"))]
        let _ = more;
    }
}

/// The inbox bell in the header: the server's unread count; opens the inbox.
#[component]
pub fn InboxBell() -> impl IntoView {
    let center = expect_context::<Center>();
    let inbox = center.inbox;
    view! {
        <Show when=move || center.user.get().is_some()>
            <button class="bell inbox-bell" data-testid="inbox-bell" on:click=move |_| inbox.open.set(true)
                aria-label=move || format!("Inbox: {} unread", inbox.unread.get())>
                <svg class="bell-icon" viewBox="0 0 24 24" width="18" height="18" aria-hidden="true"
                    fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">
                    <path d="M22 12h-6l-2 3h-4l-2-3H2"/>
                    <path d="M5.45 5.11 2 12v6a2 2 0 0 0 2 2h16a2 2 0 0 0 2-2v-6l-3.45-6.89A2 2 0 0 0 16.76 4H7.24a2 2 0 0 0-1.79 1.11z"/>
                </svg>
                <Show when=move || { inbox.unread.get() > 0 }>
                    <span class="badge" data-testid="inbox-unread">{move || inbox.unread.get()}</span>
                </Show>
            </button>
        </Show>
    }
}

fn filter_name(f: InboxFilter) -> &'static str {
    match f {
        InboxFilter::Unread => "unread",
        InboxFilter::All => "all",
        InboxFilter::Archived => "archived",
    }
}

/// The inbox view.
#[component]
pub fn InboxPanel() -> impl IntoView {
    let center = expect_context::<Center>();
    let client = expect_context::<ClientHandle>();
    let inbox = center.inbox;
    let relist = {
        let client = client.clone();
        move || client.inbox_list(false)
    };
    let set_filter = {
        let relist = relist.clone();
        move |f: InboxFilter| {
            inbox.filter.set(f);
            relist();
        }
    };
    let categories = Memo::new(move |_| {
        let mut c: Vec<String> = inbox.items.with(|items| {
            items
                .iter()
                .filter_map(|i| i.notification.category.clone())
                .collect()
        });
        if let Some(current) = inbox.category.get() {
            c.push(current);
        }
        c.sort();
        c.dedup();
        c
    });
    let on_category = {
        let relist = relist.clone();
        move |ev: leptos::ev::Event| {
            let v = event_target_value(&ev);
            inbox.category.set((!v.is_empty()).then_some(v));
            relist();
        }
    };
    let mark_all = {
        let client = client.clone();
        move |_| {
            if let Some(up_to) = inbox.newest() {
                client.inbox_update(InboxUpdate::ReadAll { up_to });
            }
        }
    };
    let more_client = client.clone();
    view! {
        <div class="panel-head">
            <div class="filters" role="tablist" aria-label="Show">
                {[InboxFilter::Unread, InboxFilter::All, InboxFilter::Archived].into_iter().map(|f| {
                    let set_filter = set_filter.clone();
                    view! {
                        <button role="tab" class="filter" data-testid=format!("inbox-filter-{}", filter_name(f))
                            aria-selected=move || (inbox.filter.get() == f).to_string()
                            on:click=move |_| set_filter(f)>{filter_name(f)}</button>
                    }
                }).collect_view()}
                <select class="category" aria-label="Category" data-testid="inbox-category" on:change=on_category>
                    <option value="">"any category"</option>
                    <For each=move || categories.get() key=|c| c.clone() children=move |c: String| {
                        let selected = { let c = c.clone(); move || inbox.category.get().as_deref() == Some(c.as_str()) };
                        view! { <option value=c.clone() selected=selected>{c.clone()}</option> }
                    }/>
                </select>
            </div>
            <button class="link-button" data-testid="inbox-mark-all" on:click=mark_all
                disabled=move || inbox.unread.get() == 0>"Mark all read"</button>
        </div>
        <DesktopNotifications/>
        <Show when=move || inbox.items.with(|i| i.is_empty())>
            <p class="empty" data-testid="inbox-empty">
                {move || match inbox.filter.get() {
                    InboxFilter::Unread => "Nothing unread.",
                    InboxFilter::All => "Your inbox is empty.",
                    InboxFilter::Archived => "Nothing archived.",
                }}
            </p>
        </Show>
        <ol class="notifications inbox" data-testid="inbox">
            <For
                each=move || inbox.items.get()
                key=|i| (i.notification.offset, i.read, i.archived)
                children=move |item: InboxItem| view! { <InboxEntry item/> }
            />
        </ol>
        <Show when=move || inbox.more.get().is_some()>
            <button class="button secondary" data-testid="inbox-more"
                on:click={ let c = more_client.clone(); move |_| c.inbox_list(true) }>"Older"</button>
        </Show>
    }
}

#[component]
fn InboxEntry(item: InboxItem) -> impl IntoView {
    let center = expect_context::<Center>();
    let client = expect_context::<ClientHandle>();
    let inbox: Inbox = center.inbox;
    let n = item.notification;
    let offset = n.offset;
    let (read, archived) = (item.read, item.archived);
    let class = move || {
        let mut c = format!("notification inbox-item prio-{}", n.priority);
        if !read {
            c.push_str(" unread");
        }
        if inbox.focus.get() == Some(offset) {
            c.push_str(" focused");
        }
        c
    };
    let open = {
        let client = client.clone();
        move |_| {
            if !read {
                client.inbox_update(InboxUpdate::Read {
                    offsets: vec![offset],
                });
            }
        }
    };
    let toggle_read = {
        let client = client.clone();
        move |ev: leptos::ev::MouseEvent| {
            ev.stop_propagation();
            let offsets = vec![offset];
            client.inbox_update(if read {
                InboxUpdate::Unread { offsets }
            } else {
                InboxUpdate::Read { offsets }
            });
        }
    };
    let archive = move |ev: leptos::ev::MouseEvent| {
        ev.stop_propagation();
        let offsets = vec![offset];
        client.inbox_update(if archived {
            InboxUpdate::Unarchive { offsets }
        } else {
            InboxUpdate::Archive { offsets }
        });
    };
    view! {
        <li class=class data-testid="inbox-item" data-offset=offset data-read=read.to_string() on:click=open>
            <div class="meta">
                {(!read).then(|| view! { <span class="unread-dot" aria-label="unread"></span> })}
                {n.category.clone().map(|c| view! { <span class="chip category-chip">{c}</span> })}
                <When ms=n.time/>
            </div>
            {n.title.clone().map(|t| view! { <h3 class="title">{t}</h3> })}
            <p class="body">{n.body.clone()}</p>
            <div class="foot">
                {n.link.clone().map(|l| view! { <a class="open-link" href=l rel="noopener noreferrer" target="_blank">"Open link"</a> })}
                <span class="spacer"></span>
                <button class="link-button" data-testid="inbox-toggle-read" on:click=toggle_read>
                    {if read { "Mark unread" } else { "Mark read" }}
                </button>
                <button class="link-button" data-testid="inbox-archive" on:click=archive>
                    {if archived { "Unarchive" } else { "Archive" }}
                </button>
            </div>
        </li>
    }
}

/// A button that asks for desktop notifications, shown only while the browser has not been
/// asked (never asked on load).
#[component]
fn DesktopNotifications() -> impl IntoView {
    let askable = RwSignal::new(false);
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        askable.set(crate::desktop::permission() == Some(web_sys::NotificationPermission::Default));
    });
    let ask = move |_| {
        #[cfg(feature = "hydrate")]
        leptos::task::spawn_local(async move {
            let answer = crate::desktop::request().await;
            askable.set(answer == Some(web_sys::NotificationPermission::Default));
        });
    };
    view! {
        <Show when=move || askable.get()>
            <p class="desktop-ask">
                <button class="button secondary" data-testid="desktop-notify" on:click=ask>
                    "Enable desktop notifications"
                </button>
                " for new inbox items while this tab is in the background."
            </p>
        </Show>
    }
}
