//! Errors of the HTTP/JSON API: a gRPC status as an HTTP status and a JSON body with the same
//! code and message, so a caller in any language sees what a gRPC caller sees.
//!
//! The HTTP status follows the table grpc-gateway uses (INVALID_ARGUMENT 400, NOT_FOUND 404,
//! ALREADY_EXISTS 409, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...); the body is
//! `{"error": {"code": "FAILED_PRECONDITION", "message": "...", ...}}` with, where gRPC
//! metadata says more, `not_applied`, `leader` and `execution_id`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;
use utoipa::ToSchema;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError(pub tonic::Status);

/// The JSON body of an error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: the gRPC code's name and the message gRPC callers get.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The gRPC code, e.g. `INVALID_ARGUMENT`, `NOT_FOUND`, `FAILED_PRECONDITION`.
    pub code: String,
    pub message: String,
    /// The request certainly did not take effect (gRPC metadata `weft-not-applied`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_applied: Option<bool>,
    /// The leader's address, when the contacted node knows it (`weft-leader`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The execution a wait was about (`weft-execution-id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<u64>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self(tonic::Status::invalid_argument(message))
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        Self(s)
    }
}

/// The gRPC code's canonical name (`INVALID_ARGUMENT`), from the table the metrics label
/// requests with.
pub fn code_name(code: Code) -> &'static str {
    crate::metrics::grpc::CODE_NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The HTTP status of a gRPC code (grpc-gateway's table).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of `status`.
pub fn body(status: &tonic::Status) -> ErrorBody {
    let meta = |name: &str| status.metadata().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    ErrorBody {
        error: ErrorDetail {
            code: code_name(status.code()).to_owned(),
            message: status.message().to_owned(),
            not_applied: meta(weft_proto::wire::NOT_APPLIED_HEADER).map(|v| v == "true"),
            leader: meta(weft_proto::wire::LEADER_HEADER),
            execution_id: meta(weft_proto::wire::EXECUTION_HEADER).and_then(|v| v.parse().ok()),
        },
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (http_status(self.0.code()), Json(body(&self.0))).into_response()
    }
}

/// An error answer with an HTTP status of its own (unknown path, wrong method, wrong content
/// type, a body over the size limit), in the same JSON shape.
pub fn plain(status: StatusCode, code: Code, message: impl Into<String>) -> Response {
    (status, Json(body(&tonic::Status::new(code, message)))).into_response()
}
