//! JSON-RPC 1.0 messages as OVSDB uses them (RFC 7047 section 4).

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum RpcMessage {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Response {
        id: Value,
        result: Value,
        error: Value,
    },
    /// A request with a null id: no reply expected (`update`, `update2`, `update3`, `locked`...).
    Notification { method: String, params: Value },
}

impl RpcMessage {
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            RpcMessage::Request { id, method, params } => {
                json!({"id": id, "method": method, "params": params})
            }
            RpcMessage::Response { id, result, error } => {
                json!({"id": id, "result": result, "error": error})
            }
            RpcMessage::Notification { method, params } => {
                json!({"id": null, "method": method, "params": params})
            }
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Reads a message from a JSON text; `None` if it is not a JSON-RPC message.
    pub fn from_value(v: Value) -> Option<RpcMessage> {
        let Value::Object(mut o) = v else { return None };
        let id = o.remove("id").unwrap_or(Value::Null);
        if let Some(Value::String(method)) = o.remove("method") {
            let params = o.remove("params").unwrap_or(Value::Array(vec![]));
            return Some(if id.is_null() {
                RpcMessage::Notification { method, params }
            } else {
                RpcMessage::Request { id, method, params }
            });
        }
        if o.contains_key("result") || o.contains_key("error") {
            return Some(RpcMessage::Response {
                id,
                result: o.remove("result").unwrap_or(Value::Null),
                error: o.remove("error").unwrap_or(Value::Null),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_responses_and_notifications_round_trip() {
        for m in [
            RpcMessage::Request {
                id: json!(7),
                method: "transact".into(),
                params: json!(["Open_vSwitch", {"op": "comment", "comment": "x"}]),
            },
            RpcMessage::Response {
                id: json!("echo"),
                result: json!([]),
                error: Value::Null,
            },
            RpcMessage::Notification {
                method: "update".into(),
                params: json!([null, {}]),
            },
        ] {
            let v: Value = serde_json::from_slice(&m.encode()).unwrap();
            assert_eq!(RpcMessage::from_value(v), Some(m));
        }
        assert_eq!(RpcMessage::from_value(json!([1, 2])), None);
    }
}
