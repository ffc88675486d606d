//! The chat view: rooms, messages grouped by author (the user's own on the other side),
//! members with their online state, who is typing, and an input that sends on Enter and shows
//! a message as pending until its ack, failed (with a retry) on error.

use super::{ClientHandle, When};
use crate::chat::{groups, valid_room, Outgoing, SendState};
use crate::state::Center;
use leptos::prelude::*;

impl ClientHandle {
    fn chat(&self, c: ChatCommand) {
        #[cfg(feature = "hydrate")]
        self.command(match c {
            ChatCommand::Join(r) => crate::client::Command::JoinRoom(r),
            ChatCommand::Leave(r) => crate::client::Command::LeaveRoom(r),
            ChatCommand::Send { room, client_id } => {
                crate::client::Command::ChatSend { room, client_id }
            }
            ChatCommand::Typing(r) => crate::client::Command::Typing(r),
        });
        #[cfg(not(feature = "hydrate"))]
        let _ = c;
    }
}

// Read only in the browser build.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
enum ChatCommand {
    Join(String),
    Leave(String),
    Send { room: String, client_id: String },
    Typing(String),
}

fn save_rooms(_rooms: &[String]) {
    #[cfg(feature = "hydrate")]
    crate::client::save_rooms(_rooms);
}

/// The page's clock in milliseconds (0 on the server).
fn now_ms() -> f64 {
    #[cfg(feature = "hydrate")]
    return js_sys::Date::now();
    #[cfg(not(feature = "hydrate"))]
    0.0
}

/// A client id for a message: unique enough per user (time and a random part).
fn client_id() -> String {
    #[cfg(feature = "hydrate")]
    return format!(
        "{:x}-{:x}",
        js_sys::Date::now() as u64,
        (js_sys::Math::random() * 4_294_967_296.0) as u64
    );
    #[cfg(not(feature = "hydrate"))]
    String::new()
}

#[component]
pub fn ChatPanel() -> impl IntoView {
    let center = expect_context::<Center>();
    let client = expect_context::<ClientHandle>();
    let chat = center.chat;
    let draft_room = RwSignal::new(String::new());
    let problem = RwSignal::new(None::<String>);
    let join = {
        let client = client.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            let room = draft_room.get_untracked().trim().to_owned();
            if !valid_room(&room) {
                problem.set(Some(
                    "a room name is 1 to 64 letters, digits, '_' or '-'".into(),
                ));
                return;
            }
            problem.set(None);
            draft_room.set(String::new());
            if !chat.is_room(&room) {
                chat.rooms.update(|r| r.push(room.clone()));
                save_rooms(&chat.rooms.get_untracked());
                client.chat(ChatCommand::Join(room.clone()));
            }
            chat.current.set(Some(room));
        }
    };
    view! {
        <div class="chat" data-testid="chat">
            <aside class="rooms">
                <ul class="room-list">
                    <For each=move || chat.rooms.get() key=|r| r.clone() children={
                        let client = client.clone();
                        move |room: String| {
                            let client = client.clone();
                            let (r1, r2, r3) = (room.clone(), room.clone(), room.clone());
                            view! {
                                <li class=move || if chat.current.get().as_deref() == Some(r1.as_str()) { "room current" } else { "room" }>
                                    <button class="room-name" data-testid="room" on:click=move |_| chat.current.set(Some(r2.clone()))>
                                        "#" {room.clone()}
                                    </button>
                                    <button class="icon-button" aria-label=format!("Leave {room}") on:click=move |_| {
                                        chat.rooms.update(|r| r.retain(|x| *x != r3));
                                        save_rooms(&chat.rooms.get_untracked());
                                        if chat.current.get_untracked().as_deref() == Some(r3.as_str()) {
                                            chat.current.set(None);
                                        }
                                        client.chat(ChatCommand::Leave(r3.clone()));
                                    }>"×"</button>
                                </li>
                            }
                        }
                    }/>
                </ul>
                <form class="inline-form" on:submit=join>
                    <input type="text" placeholder="chat-room" aria-label="Room to join" data-testid="room-input"
                        bind:value=draft_room maxlength="64"/>
                    <button type="submit" class="button secondary" data-testid="room-join">"Join"</button>
                </form>
                <Show when=move || problem.get().is_some()>
                    <p class="form-error">{move || problem.get().unwrap_or_default()}</p>
                </Show>
            </aside>
            <Show when=move || chat.current.get().is_some()
                fallback=|| view! { <p class="empty">"Join a room to chat (rooms with presence are named chat-…)."</p> }>
                {move || chat.current.get().map(|room| view! { <Room room/> })}
            </Show>
        </div>
    }
}

#[component]
fn Room(room: String) -> impl IntoView {
    let center = expect_context::<Center>();
    let client = expect_context::<ClientHandle>();
    let chat = center.chat;
    let draft = RwSignal::new(String::new());
    // Ticks every second while the room is on screen, so typing indicators expire.
    let now = RwSignal::new(now_ms());
    #[cfg(feature = "hydrate")]
    {
        let alive = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let a = alive.clone();
        on_cleanup(move || a.store(false, std::sync::atomic::Ordering::Relaxed));
        leptos::task::spawn_local(async move {
            while alive.load(std::sync::atomic::Ordering::Relaxed) {
                gloo_timers::future::TimeoutFuture::new(1_000).await;
                if alive.load(std::sync::atomic::Ordering::Relaxed) {
                    now.set(js_sys::Date::now());
                }
            }
        });
    }
    let last_typing = StoredValue::new(0.0f64);
    let (r_members, r_count, r_msgs, r_out, r_typing, r_send, r_type) = (
        room.clone(),
        room.clone(),
        room.clone(),
        room.clone(),
        room.clone(),
        room.clone(),
        room.clone(),
    );
    let send = {
        let client = client.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            let body = draft.get_untracked().trim().to_owned();
            if body.is_empty() {
                return;
            }
            draft.set(String::new());
            let o = Outgoing {
                room: r_send.clone(),
                client_id: client_id(),
                body,
                state: SendState::Sending,
            };
            let cmd = ChatCommand::Send {
                room: o.room.clone(),
                client_id: o.client_id.clone(),
            };
            chat.outgoing.update(|x| x.push(o));
            client.chat(cmd);
        }
    };
    let typing_client = client.clone();
    let on_input = move |_| {
        // At most one `typing` every two seconds while the user types.
        let t = now_ms();
        if t - last_typing.get_value() > 2_000.0 {
            last_typing.set_value(t);
            typing_client.chat(ChatCommand::Typing(r_type.clone()));
        }
    };
    let retry_client = client.clone();
    view! {
        <section class="room-view">
            <header class="room-head">
                <h2>"#" {room.clone()}</h2>
                <ul class="members" data-testid="members">
                    {move || {
                        let count = chat.member_counts.with(|c| c.get(&r_count).copied());
                        match count {
                            Some(n) => view! { <li class="member">{format!("{n} members")}</li> }.into_any(),
                            None => chat.members.with(|m| m.get(&r_members).cloned().unwrap_or_default())
                                .into_iter()
                                .map(|u| view! { <li class="member online" data-testid="member"><span class="dot" aria-hidden="true"></span>{u}</li> })
                                .collect_view()
                                .into_any(),
                        }
                    }}
                </ul>
            </header>
            <div class="messages" data-testid="messages">
                {move || {
                    let me = center.user.get();
                    let list = chat.messages.with(|m| m.get(&r_msgs).cloned().unwrap_or_default());
                    groups(&list).into_iter().map(|(author, msgs)| {
                        let own = author.is_some() && author == me;
                        view! {
                            <div class=if own { "group own" } else { "group" }>
                                <div class="author">{author.unwrap_or_else(|| "server".into())}</div>
                                {msgs.into_iter().map(|n| view! {
                                    <p class="message" data-testid="message">
                                        <span class="text">{n.body.clone()}</span>
                                        <When ms=n.time/>
                                    </p>
                                }).collect_view()}
                            </div>
                        }
                    }).collect_view()
                }}
                {move || chat.outgoing.get().into_iter().filter(|o| o.room == r_out).map(|o| {
                    let failed = matches!(o.state, SendState::Failed(_));
                    let why = match &o.state { SendState::Failed(w) => w.clone(), SendState::Sending => String::new() };
                    let retry = {
                        let client = retry_client.clone();
                        let (room, cid) = (o.room.clone(), o.client_id.clone());
                        move |_| {
                            let c2 = cid.clone();
                            chat.outgoing.update(|x| {
                                for m in x.iter_mut().filter(|m| m.client_id == c2) {
                                    m.state = SendState::Sending;
                                }
                            });
                            client.chat(ChatCommand::Send { room: room.clone(), client_id: cid.clone() });
                        }
                    };
                    view! {
                        <div class="group own">
                            <p class=if failed { "message failed" } else { "message pending" } data-testid="message-pending">
                                <span class="text">{o.body.clone()}</span>
                                {if failed {
                                    view! { <span class="state">"failed: " {why} " "<button class="link-button" data-testid="retry" on:click=retry>"Retry"</button></span> }.into_any()
                                } else {
                                    view! { <span class="state">"sending…"</span> }.into_any()
                                }}
                            </p>
                        </div>
                    }
                }).collect_view()}
            </div>
            <p class="typing" data-testid="typing">
                {move || {
                    let me = center.user.get();
                    let who = chat.typists(&r_typing, now.get(), me.as_deref());
                    match who.len() {
                        0 => String::new(),
                        1 => format!("{} is typing…", who[0]),
                        _ => format!("{} are typing…", who.join(", ")),
                    }
                }}
            </p>
            <form class="chat-input" on:submit=send>
                <input type="text" placeholder="Message" aria-label="Message" data-testid="chat-input"
                    bind:value=draft on:input=on_input maxlength="4000" autocomplete="off"/>
                <button type="submit" class="button" data-testid="chat-send">"Send"</button>
            </form>
        </section>
    }
}
