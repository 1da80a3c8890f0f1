//! The caller of an HTTP request: the transport extracts the credential (a
//! bearer token, `?access_token=` on SSE, or the TLS listener's verified
//! client certificate) and the bus decides who that is.

use axum::extract::{FromRequestParts, Query};
use axum::http::header;
use axum::http::request::Parts;
use serde::Deserialize;

use super::problem::Problem;
use super::AppState;
use crate::auth::{Caller, Credential, PeerCommonName};

/// The request's caller, authenticated by the bus. With `QUERY` (the SSE
/// endpoint, as `EventSource` cannot set headers) the token may also come as
/// `?access_token=`.
pub struct Authenticated<const QUERY: bool = false>(pub Caller);

#[derive(Deserialize)]
struct AccessToken {
    access_token: Option<String>,
}

/// The credential `parts` carry: an `Authorization` header first, then
/// (with `query`) `?access_token=`, then the client certificate.
pub fn credential(parts: &Parts, query: bool) -> Credential {
    let authorization = parts.headers.get(header::AUTHORIZATION);
    if authorization.is_none() && query {
        if let Ok(Query(AccessToken {
            access_token: Some(token),
        })) = Query::<AccessToken>::try_from_uri(&parts.uri)
        {
            return Credential::Bearer(token);
        }
    }
    Credential::of(
        authorization.map(|v| v.as_bytes()),
        parts.extensions.get::<PeerCommonName>(),
    )
}

impl<const QUERY: bool> FromRequestParts<AppState> for Authenticated<QUERY> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let credential = credential(parts, QUERY);
        Ok(Authenticated(state.bus.authenticate(&credential).await?))
    }
}
