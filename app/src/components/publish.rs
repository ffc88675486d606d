//! A small publish form, so a visitor can try Herald without curl.

use crate::protocol::NewNotification;
use crate::state::Center;
use leptos::prelude::*;

/// Only the browser build sends, so only it constructs `Sent`.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    Idle,
    Sending,
    Sent(String),
    Failed(String),
}

#[component]
pub fn PublishForm() -> impl IntoView {
    let center = expect_context::<Center>();
    let topic = RwSignal::new(
        center
            .topics
            .with_untracked(|t| t.first().cloned())
            .unwrap_or_else(|| crate::DEFAULT_TOPIC.to_owned()),
    );
    let title = RwSignal::new(String::new());
    let body = RwSignal::new(String::new());
    let priority = RwSignal::new("3".to_owned());
    let tags = RwSignal::new(String::new());
    let status = RwSignal::new(Status::Idle);

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let t = topic.get_untracked().trim().to_owned();
        let new = NewNotification {
            title: Some(title.get_untracked().trim().to_owned()).filter(|s| !s.is_empty()),
            body: body.get_untracked(),
            priority: priority.get_untracked().parse().ok(),
            tags: tags
                .get_untracked()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            link: None,
            category: None,
            author: None,
        };
        if let Err(e) = crate::protocol::validate_topic(&t).and_then(|()| new.validate(usize::MAX))
        {
            status.set(Status::Failed(e.message));
            return;
        }
        status.set(Status::Sending);
        send(t, new, status, body);
    };

    let ready = super::hydrated();
    let off = move || !ready.get();
    view! {
        <section class="panel">
            <h2>"Publish"</h2>
            <form class="publish" on:submit=submit data-testid="publish-form">
                <label>"Topic" <input type="text" bind:value=topic data-testid="publish-topic" disabled=off maxlength="64" required/></label>
                <label>"Title" <input type="text" bind:value=title data-testid="publish-title" disabled=off maxlength="256" placeholder="optional"/></label>
                <label>"Message" <textarea bind:value=body data-testid="publish-body" disabled=off rows="3" required placeholder="Deploy finished"></textarea></label>
                <div class="row">
                    <label>"Priority"
                        <select bind:value=priority data-testid="publish-priority" disabled=off>
                            <option value="1">"1 min"</option>
                            <option value="2">"2 low"</option>
                            <option value="3" selected>"3 default"</option>
                            <option value="4">"4 high"</option>
                            <option value="5">"5 urgent"</option>
                        </select>
                    </label>
                    <label>"Tags" <input type="text" bind:value=tags data-testid="publish-tags" disabled=off placeholder="deploy, prod"/></label>
                </div>
                <button type="submit" class="button" data-testid="publish-submit"
                    disabled=move || status.get() == Status::Sending || off()>"Publish"</button>
                <p class="form-status" data-testid="publish-status" role="status">
                    {move || match status.get() {
                        Status::Idle => String::new(),
                        Status::Sending => "Sending…".into(),
                        Status::Sent(s) | Status::Failed(s) => s,
                    }}
                </p>
            </form>
        </section>
    }
}

#[cfg(feature = "hydrate")]
fn send(topic: String, new: NewNotification, status: RwSignal<Status>, body: RwSignal<String>) {
    use crate::protocol::{ErrorBody, Notification};
    leptos::task::spawn_local(async move {
        let url = format!("/api/topics/{topic}");
        let mut builder = gloo_net::http::Request::post(&url);
        if let Some(bearer) = crate::auth::bearer() {
            builder = builder.header("Authorization", &bearer);
        }
        let req = match builder.json(&new) {
            Ok(r) => r,
            Err(e) => return status.set(Status::Failed(e.to_string())),
        };
        match req.send().await {
            Ok(resp) if resp.ok() => match resp.json::<Notification>().await {
                Ok(n) => {
                    body.set(String::new());
                    status.set(Status::Sent(format!(
                        "Published #{} to {}",
                        n.offset, n.topic
                    )));
                }
                Err(e) => status.set(Status::Failed(e.to_string())),
            },
            Ok(resp) => {
                let msg = match resp.json::<ErrorBody>().await {
                    Ok(b) => b.error.message,
                    Err(_) => format!("HTTP {}", resp.status()),
                };
                status.set(Status::Failed(msg));
            }
            Err(e) => status.set(Status::Failed(format!("network error: {e}"))),
        }
    });
}

#[cfg(not(feature = "hydrate"))]
fn send(_: String, _: NewNotification, _: RwSignal<Status>, _: RwSignal<String>) {}
