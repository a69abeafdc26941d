//! Reading requests: a JSON body (content type checked, size bounded by the router's body
//! limit, malformed JSON named) and a query string, each failing with the API's JSON error
//! and a 4xx status, never a server error.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::plain;

/// A JSON body: `application/json` (or no content type), parsed into `T`. An empty body is
/// JSON `null`, so optional bodies may be left out.
pub struct JsonBody<T>(pub T);

/// A body as sent (a state value), its size bounded by the router's body limit.
pub struct RawBody(pub Bytes);

/// A query string parsed into `T`.
pub struct QueryOf<T>(pub T);

/// Path parameters parsed into `T`.
pub struct PathOf<T>(pub T);

/// A refused request: its status and JSON error.
pub struct Refused(Response);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        self.0
    }
}

fn bad(message: String) -> Refused {
    Refused(plain(StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, message))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Refused;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        if let Some(ct) = content_type.filter(|_| !bytes.is_empty()) {
            let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(Refused(plain(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    tonic::Code::InvalidArgument,
                    format!("the body must be JSON (Content-Type: application/json), not '{ct}'"),
                )));
            }
        }
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"null" } else { &bytes };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| bad(format!("the body is not valid here: {e}")))
    }
}

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Refused;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state).await.map(RawBody).map_err(|e: BytesRejection| {
            let status = e.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                tonic::Code::OutOfRange
            } else {
                tonic::Code::InvalidArgument
            };
            Refused(plain(status, code, format!("cannot read the body: {}", e.body_text())))
        })
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for QueryOf<T> {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryOf(q))
            .map_err(|e: QueryRejection| bad(format!("bad query string: {}", e.body_text())))
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathOf<T> {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathOf(p))
            .map_err(|e: PathRejection| bad(format!("bad path: {}", e.body_text())))
    }
}
