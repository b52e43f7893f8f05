//! `/api/v1/connections`: list (filtered, in pages), read, request and close.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use meshwire_controller::{ConnectionFilter, Controller, ControllerError};
use meshwire_models::{ConnectionRequest, ConnectionState};
use serde::Serialize;

use crate::{json_body, objects, policy, ApiResult, Q};

/// A page of connections, serialized straight from the models (no intermediate JSON tree).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectionList {
    api_version: &'static str,
    kind: &'static str,
    metadata: ListMeta,
    items: Vec<meshwire_models::Connection>,
}

#[derive(Serialize)]
pub(crate) struct ListMeta {
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    cont: Option<String>,
}

pub(crate) async fn list_connections(
    State(ctl): State<Controller>,
    Q(q): Q<objects::ListQuery>,
) -> ApiResult<Json<ConnectionList>> {
    let state = match &q.state {
        None => None,
        Some(s) => Some(
            s.parse::<ConnectionState>()
                .map_err(|e| objects::invalid_query("state", e))?,
        ),
    };
    let sel = objects::selector(&q)?;
    let (limit, after) = (q.limit()?, q.after()?);
    let conns: Vec<_> = ctl
        .connections(&ConnectionFilter {
            service: q.service.clone(),
            node: q.node.clone(),
            state,
            endpoint: q.endpoint.clone(),
        })
        .into_iter()
        .filter(|c| sel.matches(&c.labels))
        .collect();
    // Sorted by creation time, then id: a fixed-width key keeps that order as strings.
    let (items, next) = objects::page(
        conns,
        |c| format!("{:020}/{}", c.created_at_ms, c.id),
        after,
        limit,
    );
    Ok(Json(ConnectionList {
        api_version: "meshwire.io/v1",
        kind: "ConnectionList",
        metadata: ListMeta { cont: next },
        items,
    }))
}

pub(crate) async fn get_connection(
    State(ctl): State<Controller>,
    Path(id): Path<String>,
) -> ApiResult<Json<meshwire_models::Connection>> {
    ctl.connection(&id)
        .map(Json)
        .ok_or_else(|| ControllerError::UnknownConnection { id }.into())
}

/// `201` with the new connection; with an `Idempotency-Key` already stored with a connection
/// (this caller's, on this controller or on the one that led before a failover), `200` with that
/// connection and `Idempotent-Replayed: true`.
pub(crate) async fn request_connection(
    State(ctl): State<Controller>,
    caller: policy::Caller,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let req: ConnectionRequest = json_body("connection request", &body)?;
    caller.may_request(&req)?;
    // The caller's token name, never its secret, goes into the stored key.
    let key = headers
        .get(crate::idempotency::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("{}:{k}", caller.name));
    let (c, replayed) = ctl.request_once(req, key).await?;
    Ok(if replayed {
        (StatusCode::OK, [("idempotent-replayed", "true")], Json(c)).into_response()
    } else {
        (StatusCode::CREATED, Json(c)).into_response()
    })
}

pub(crate) async fn close_connection(
    State(ctl): State<Controller>,
    caller: policy::Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<meshwire_models::Connection>> {
    let conn = ctl
        .connection(&id)
        .ok_or_else(|| ControllerError::UnknownConnection { id: id.clone() })?;
    caller.may_close(&conn)?;
    Ok(Json(ctl.close(&id).await?))
}
