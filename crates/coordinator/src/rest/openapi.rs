//! The OpenAPI 3.1 document of the REST routes, made from the route table
//! and the protobuf descriptors, so it cannot drift from what is served.

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::json::descriptor;

/// One route, as the document describes it.
pub struct Route {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path, with `{param}`s.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// The gRPC method behind it.
    pub rpc: &'static str,
    /// The message its JSON body is, if it takes one.
    pub body: Option<&'static str>,
    /// The message whose other fields its query string gives, if any.
    pub query: Option<&'static str>,
    /// The message it answers with (or streams, as events).
    pub answer: &'static str,
    /// Whether it answers with Server-Sent Events.
    pub events: bool,
    /// Whether its body is a CSV (`text/csv`) rather than JSON.
    pub csv: bool,
}

const fn route(
    method: &'static str,
    path: &'static str,
    rpc: &'static str,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        summary,
        rpc,
        body: None,
        query: None,
        answer: "",
        events: false,
        csv: false,
    }
}

/// Every route.
pub const ROUTES: [Route; 9] = [
    Route {
        body: Some("SubmitBatchRequest"),
        answer: "SubmitBatchResponse",
        ..route(
            "post",
            "/v1/batches",
            "SubmitBatch",
            "Submit a batch: explicit messages or a synthetic one. Idempotent by idempotency_key.",
        )
    },
    Route {
        query: Some("UploadHeader"),
        answer: "SubmitBatchResponse",
        csv: true,
        ..route(
            "post",
            "/v1/batches/upload",
            "SubmitBatchStream",
            "A broadcast to a CSV of numbers (the body: a number and an optional client_ref a line; a header row is skipped) as one batch; the query gives the UploadHeader's fields. Nothing is accepted unless every line is good.",
        )
    },
    Route {
        query: Some("ListBatchesRequest"),
        answer: "ListBatchesResponse",
        ..route(
            "get",
            "/v1/batches",
            "ListBatches",
            "The caller's batches, newest first, a page at a time.",
        )
    },
    Route {
        answer: "BatchStatus",
        ..route(
            "get",
            "/v1/batches/{batch_id}",
            "GetStatus",
            "A batch's status.",
        )
    },
    Route {
        answer: "CancelBatchResponse",
        ..route(
            "post",
            "/v1/batches/{batch_id}/cancel",
            "CancelBatch",
            "Cancel a batch: nothing more of it is dispatched.",
        )
    },
    Route {
        query: Some("ListMessagesRequest"),
        answer: "ListMessagesResponse",
        ..route(
            "get",
            "/v1/batches/{batch_id}/messages",
            "ListMessages",
            "A batch's messages, in index order, a page at a time, optionally only some states.",
        )
    },
    Route {
        query: Some("WatchProgressRequest"),
        answer: "ProgressUpdate",
        events: true,
        ..route(
            "get",
            "/v1/batches/{batch_id}/progress",
            "WatchProgress",
            "A batch's progress as Server-Sent Events (`progress` events, each a ProgressUpdate), until it ends.",
        )
    },
    Route {
        query: Some("WatchProgressRequest"),
        answer: "ProgressUpdate",
        events: true,
        ..route(
            "get",
            "/v1/progress",
            "WatchProgress",
            "The progress of every batch of the caller's, as Server-Sent Events; never ends by itself.",
        )
    },
    Route {
        answer: "MessageStatus",
        ..route(
            "get",
            "/v1/messages/{message_id}",
            "GetStatus",
            "A message's status (`<batch_id>.<index>`).",
        )
    },
];

/// The operator's route (pausing a class), listed apart: it needs a scope.
pub const OPERATOR_ROUTE: Route = Route {
    body: Some("SetClassPausedRequest"),
    answer: "SetClassPausedResponse",
    ..route(
        "post",
        "/v1/classes/paused",
        "SetClassPaused",
        "Pause or resume dispatch of a class of traffic (needs the smsmesh:operator scope).",
    )
};

/// Every route, the operator's included.
pub fn all_routes() -> impl Iterator<Item = &'static Route> {
    ROUTES.iter().chain(std::iter::once(&OPERATOR_ROUTE))
}

/// The schema of one field's value (not minding whether it repeats).
fn kind_schema(kind: &Kind, wanted: &mut Vec<String>) -> Value {
    let reference = |name: &str, wanted: &mut Vec<String>| {
        wanted.push(name.to_string());
        json!({ "$ref": format!("#/components/schemas/{name}") })
    };
    match kind {
        Kind::Message(m) => reference(m.name(), wanted),
        Kind::Enum(e) => reference(e.name(), wanted),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::Float | Kind::Double => json!({ "type": "number" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({ "type": "integer", "format": "int32" })
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX })
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": ["integer", "string"], "format": "int64" })
        }
        Kind::Uint64 | Kind::Fixed64 => json!({ "type": ["integer", "string"], "minimum": 0 }),
    }
}

/// The schema of message `m`: an object of its fields by their proto names.
fn message_schema(m: &MessageDescriptor, wanted: &mut Vec<String>) -> Value {
    let mut properties = Map::new();
    for f in m.fields() {
        let value = kind_schema(&f.kind(), wanted);
        let schema = if f.is_list() {
            json!({ "type": "array", "items": value })
        } else {
            value
        };
        properties.insert(f.name().to_string(), schema);
    }
    json!({ "type": "object", "properties": properties, "additionalProperties": false })
}

/// The query parameters of a route: its query message's fields that are
/// not in its path.
fn query_parameters(r: &Route, wanted: &mut Vec<String>) -> Vec<Value> {
    let Some(name) = r.query else {
        return Vec::new();
    };
    descriptor(name)
        .fields()
        .filter(|f| !r.path.contains(&format!("{{{}}}", f.name())))
        .map(|f| {
            let value = kind_schema(&f.kind(), wanted);
            let (schema, explode) = if f.is_list() {
                (json!({ "type": "array", "items": value }), true)
            } else {
                (value, false)
            };
            json!({ "name": f.name(), "in": "query", "required": false, "schema": schema, "explode": explode })
        })
        .collect()
}

/// The whole document.
pub fn document() -> Value {
    let mut wanted: Vec<String> = vec![];
    let mut paths = Map::new();
    for r in all_routes() {
        let mut parameters: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        parameters.extend(query_parameters(r, &mut wanted));
        let answer = kind_schema(&Kind::Message(descriptor(r.answer)), &mut wanted);
        let ok = if r.events {
            json!({ "description": format!("Server-Sent Events: `progress` events whose data is a {} in JSON; an `error` event (data: an Error) if the stream fails", r.answer),
                    "content": { "text/event-stream": { "schema": { "type": "string" } } } })
        } else {
            json!({ "description": r.answer, "content": { "application/json": { "schema": answer } } })
        };
        let mut op = json!({
            "operationId": format!("{}_{}", r.method, r.path.trim_start_matches('/').replace(['/', '{', '}'], "_")),
            "summary": r.summary,
            "description": format!("gRPC: smsmesh.v1.Coordinator/{}", r.rpc),
            "parameters": parameters,
            "responses": {
                "200": ok,
                "default": { "description": "An error: the HTTP status mapped from the gRPC status, and its code name and message",
                             "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }
        });
        if r.csv {
            op["requestBody"] = json!({ "required": true, "content": { "text/csv": { "schema": { "type": "string" } } } });
        }
        if let Some(body) = r.body {
            let schema = kind_schema(&Kind::Message(descriptor(body)), &mut wanted);
            op["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": schema } } });
        }
        paths
            .entry(r.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a path item is an object")
            .insert(r.method.to_string(), op);
    }
    let mut schemas = Map::new();
    while let Some(name) = wanted.pop() {
        if schemas.contains_key(&name) {
            continue;
        }
        let full = format!("smsmesh.v1.{name}");
        let pool = descriptor("BatchStatus").parent_pool().clone();
        let schema = if let Some(e) = pool.get_enum_by_name(&full) {
            json!({ "type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>() })
        } else {
            message_schema(&descriptor(&name), &mut wanted)
        };
        schemas.insert(name, schema);
    }
    schemas.insert(
        "Error".into(),
        json!({ "type": "object", "required": ["error"], "properties": { "error": { "type": "object",
            "required": ["code", "status", "message"],
            "properties": {
                "code": { "type": "integer", "description": "the HTTP status" },
                "status": { "type": "string", "description": "the gRPC status code's name, e.g. INVALID_ARGUMENT" },
                "message": { "type": "string", "description": "what was wrong" } } } } }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "smsmesh Coordinator API (REST/JSON)",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The smsmesh.v1.Coordinator gRPC API over HTTP and JSON: the proto3 JSON mapping with the proto's field names (camelCase names are accepted too). Errors carry the HTTP status mapped from the gRPC status; RESOURCE_EXHAUSTED (429) says when to retry in Retry-After."
        },
        "security": [ { "bearer": [] } ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } }
        }
    })
}
