//! The HTTP API body target: a request through the JSON body extractor the routes use, then
//! what the route makes of the body (the protocol request, the grid command) validated against
//! the node's default limits and applied to a grid.

use axum::body::Body;
use axum::extract::FromRequest as _;
use axum::http::{Request, header};
use serde::de::DeserializeOwned;
use weft_proto::fabric::v1 as pb;

use super::grid;
use crate::convert;
use crate::grid::Command;
use crate::rest::body::JsonBody;
use crate::rest::model::{self, Append, CancelBody, CreateExecution};

/// `body` read by the extractor as `T`, sent with `content_type`.
fn extract<T: DeserializeOwned>(content_type: Option<&str>, body: &[u8]) -> Option<T> {
    let mut request = Request::post("/");
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let request = request.body(Body::from(body.to_vec())).expect("a request builds");
    futures::executor::block_on(JsonBody::<T>::from_request(request, &())).ok().map(|JsonBody(v)| v)
}

/// A JSON value as the API stores it (a JSON payload) reads back equal (floats aside: JSON does
/// not promise to read them back bit-exact), and the fabric accepts it as a JSON payload.
fn check_json(value: &serde_json::Value) -> pb::Payload {
    let payload = model::json_payload(value);
    let again: serde_json::Value = serde_json::from_slice(&payload.data).expect("a stored JSON value parses");
    if !has_float(value) {
        assert_eq!(&again, value, "a JSON value changed when stored");
    }
    convert::payload(Some(payload.clone()))
        .and_then(|p| p.validate().map(|()| p))
        .unwrap_or_else(|e| panic!("the fabric refuses a JSON payload the API made: {e}"));
    payload
}

fn has_float(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(items) => items.iter().any(has_float),
        serde_json::Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

/// Applies `command` to the fuzz grid if it passes the node's validation, as the API would
/// propose it.
fn propose(command: Command) {
    if command.validate(&crate::Config::default().limits()).is_ok() {
        grid::apply_checked(&mut grid::populated().clone(), &[command]);
    }
}

/// Runs `body` as the body of route `route` (an index into `super::REST_BODIES`).
pub(super) fn check(route: u8, content_type: Option<&str>, body: &[u8]) -> bool {
    let config = crate::Config::default();
    match route {
        0 => {
            let Some(create) = extract::<CreateExecution>(content_type, body) else { return false };
            let args = create.args.clone();
            let request = create.into_pb("key-1".into());
            assert_eq!(request.payload.as_ref().map(|p| p.data.clone()), Some(check_json(&args).data));
            if let Ok(new) = convert::new_execution(request, &config.work_options()) {
                propose(Command::CreateServedExecution(Box::new(new)));
            }
            true
        }
        1 => {
            let Some(cancel) = extract::<Option<CancelBody>>(content_type, body) else { return false };
            let reason = cancel.unwrap_or_default().reason;
            propose(Command::Cancel { execution: 1, reason });
            true
        }
        2 => {
            let Some(args) = extract::<Option<serde_json::Value>>(content_type, body) else { return false };
            check_json(&args.unwrap_or(serde_json::Value::Null));
            true
        }
        _ => {
            let Some(append) = extract::<Append>(content_type, body) else { return false };
            let values: Vec<_> = append.items.iter().map(|i| i.payload.clone()).collect();
            let request = append.into_pb("orders".into());
            for (value, item) in values.iter().zip(&request.items) {
                assert_eq!(item.payload.as_ref().map(|p| &p.data), Some(&check_json(value).data));
            }
            if let Ok(append) = convert::append(request) {
                propose(Command::Append(Box::new(append)));
            }
            true
        }
    }
}
