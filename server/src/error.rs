//! HTTP errors: every failure maps to a status and the JSON body
//! `{"error":{"code":"...","message":"..."}}` defined in the shared protocol.

use crate::auth::AuthError;
use crate::store::StoreError;
use app::protocol::{ErrorBody, ErrorCode, ErrorDetail, ValidationError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{1}")]
    Invalid(ErrorCode, String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    /// The server is not set up for this (minting without a signing secret).
    #[error("{0}")]
    NotConfigured(String),
    #[error("origin {0:?} is not allowed")]
    ForbiddenOrigin(String),
    #[error("the request took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Over a rate limit; retry after this long.
    #[error("{1}; retry in {0:?}")]
    RateLimited(std::time::Duration, &'static str),
    #[error("{0}")]
    TooManyConnections(String),
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Invalid(e.code, e.message)
    }
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Invalid(code, _) => *code,
            ApiError::TooLarge(_) => ErrorCode::TooLarge,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Unavailable(_) | ApiError::NotConfigured(_) => ErrorCode::Unavailable,
            ApiError::ForbiddenOrigin(_) => ErrorCode::ForbiddenOrigin,
            ApiError::Timeout(_) => ErrorCode::Timeout,
            ApiError::Store(
                StoreError::Closed | StoreError::Full(_) | StoreError::Unavailable(_),
            ) => ErrorCode::Unavailable,
            ApiError::Store(_) => ErrorCode::Internal,
            ApiError::Auth(e) => e.code(),
            ApiError::RateLimited(..) => ErrorCode::RateLimited,
            ApiError::TooManyConnections(_) => ErrorCode::TooManyConnections,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::TooLarge(_) | ApiError::Invalid(ErrorCode::TooLarge, _) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Invalid(..) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_)
            | ApiError::Store(StoreError::Closed)
            | ApiError::Store(StoreError::Full(_))
            | ApiError::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ForbiddenOrigin(_) => StatusCode::FORBIDDEN,
            ApiError::NotConfigured(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::RateLimited(..) | ApiError::TooManyConnections(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Auth(
                AuthError::Missing
                | AuthError::Invalid(_)
                | AuthError::Expired
                | AuthError::Revoked,
            ) => StatusCode::UNAUTHORIZED,
            ApiError::Auth(AuthError::Forbidden { .. } | AuthError::AdminOnly) => {
                StatusCode::FORBIDDEN
            }
            ApiError::Auth(AuthError::InUrl | AuthError::SubjectMismatch(_)) => {
                StatusCode::BAD_REQUEST
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::RateLimited(wait, _) => Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            ApiError::Store(StoreError::Unavailable(_)) | ApiError::Unavailable(_) => Some(1),
            _ => None,
        };
        // 500s are bugs or broken storage and are logged each time; 503s are states (a full
        // store, a dead writer that was logged once when it died) and would flood the log.
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
        }
        match &self {
            ApiError::Auth(e) => crate::metrics::auth_failure(e.reason()),
            ApiError::RateLimited(_, what) => crate::metrics::rate_limited(limit_name(what)),
            ApiError::Invalid(ErrorCode::RateLimited, _) => {
                crate::metrics::rate_limited("publish_burst")
            }
            ApiError::TooManyConnections(_) => crate::metrics::rate_limited("connections_per_ip"),
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// The metrics label of a rate limit, from the message its refusal carries.
fn limit_name(message: &str) -> &'static str {
    if message.contains("connections") {
        "connects_per_ip"
    } else if message.contains("address") {
        "publish_per_ip"
    } else {
        "publish_per_credential"
    }
}
