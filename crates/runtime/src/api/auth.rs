//! Who is calling, as extractors: a handler names the caller it needs and never sees a
//! credential.
//!
//! Both kinds of credential come as `Authorization: Bearer <credential>`: an operator key
//! (`bok_...`) or a session token (`bst_...`). A missing or unknown credential is 401
//! `unauthorized`; a valid one that may not call the endpoint is 403 `forbidden`.

use axum::extract::{FromRequestParts, Path};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use bursar_store::runtime::SessionRecord;

use super::error::ApiError;
use crate::error::RuntimeError;
use crate::service::Runtime;
use crate::tokens::is_session_token;

/// Any valid caller.
pub enum Caller {
    Operator,
    Agent(Box<SessionRecord>),
}

/// The operator (an operator key); session tokens are refused.
pub struct Operator;

/// The operator, or the agent holding the token of the session named in the path.
pub struct SessionReader {
    /// The session named in the path.
    pub session_id: String,
    pub caller: Caller,
}

/// The agent holding the token of the session named in the path: paying through a session is
/// its agent's alone.
pub struct SessionAgent(pub SessionRecord);

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

async fn session_in_path(parts: &mut Parts, runtime: &Runtime) -> Result<String, ApiError> {
    Path::<String>::from_request_parts(parts, runtime)
        .await
        .map(|Path(session)| session)
        .map_err(|rejection| RuntimeError::Invalid(rejection.body_text()).into())
}

fn other_session() -> ApiError {
    RuntimeError::Forbidden("this token belongs to another session".into()).into()
}

impl FromRequestParts<Runtime> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, runtime: &Runtime) -> Result<Self, ApiError> {
        let credential = bearer(&parts.headers).ok_or(RuntimeError::Unauthorized)?;
        if is_session_token(credential) {
            let session = runtime.authenticate(credential).await?;
            return Ok(Caller::Agent(Box::new(session)));
        }
        if runtime.is_operator_key(credential).await? {
            Ok(Caller::Operator)
        } else {
            Err(RuntimeError::Unauthorized.into())
        }
    }
}

impl FromRequestParts<Runtime> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, runtime: &Runtime) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, runtime).await? {
            Caller::Operator => Ok(Operator),
            Caller::Agent(_) => Err(RuntimeError::Forbidden(
                "session tokens cannot use operator endpoints".into(),
            )
            .into()),
        }
    }
}

impl FromRequestParts<Runtime> for SessionReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, runtime: &Runtime) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, runtime).await?;
        let session_id = session_in_path(parts, runtime).await?;
        if let Caller::Agent(session) = &caller
            && session.id != session_id
        {
            return Err(other_session());
        }
        Ok(SessionReader { session_id, caller })
    }
}

impl FromRequestParts<Runtime> for SessionAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, runtime: &Runtime) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, runtime).await?;
        let session_id = session_in_path(parts, runtime).await?;
        match caller {
            Caller::Agent(session) if session.id == session_id => Ok(SessionAgent(*session)),
            Caller::Agent(_) => Err(other_session()),
            Caller::Operator => Err(RuntimeError::Forbidden(
                "only the session's agent (its session token) can pay through it".into(),
            )
            .into()),
        }
    }
}
