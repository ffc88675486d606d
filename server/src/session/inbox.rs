//! The socket's inbox frames: `inbox_list` and `inbox_update`, for the connection's own user,
//! answered by the same code as the HTTP API ([`crate::inbox`]).

use super::{Session, Socket, Stop};
use app::protocol::{ErrorCode, InboxQuery, InboxUpdate, ServerFrame};

impl<S: Socket> Session<S> {
    async fn no_inbox(&mut self, id: Option<u64>) -> Result<(), Stop> {
        let msg = "only a user signed in with a token has an inbox";
        self.error(ErrorCode::Forbidden, msg, id).await
    }

    pub(super) async fn inbox_list(
        &mut self,
        query: InboxQuery,
        id: Option<u64>,
    ) -> Result<(), Stop> {
        let Some(user) = self.user_id() else {
            return self.no_inbox(id).await;
        };
        match crate::inbox::list(&self.state, &user, query).await {
            Ok(page) => self.io.send(&ServerFrame::InboxPage { page, id }).await,
            Err(e) => self.error(e.code(), &e.to_string(), id).await,
        }
    }

    pub(super) async fn inbox_update(
        &mut self,
        update: InboxUpdate,
        id: Option<u64>,
    ) -> Result<(), Stop> {
        let Some(user) = self.user_id() else {
            return self.no_inbox(id).await;
        };
        match crate::inbox::update(&self.state, &user, update).await {
            Ok(change) => {
                let frame = ServerFrame::InboxUpdated {
                    changed: change.changed,
                    unread: change.count.unread,
                    seq: change.count.seq,
                    id,
                };
                self.io.send(&frame).await
            }
            Err(e) => self.error(e.code(), &e.to_string(), id).await,
        }
    }
}
