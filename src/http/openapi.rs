//! `GET /api/openapi.json`: the OpenAPI 3.1 document, generated from the Rust types.
//!
//! utoipa derives the schemas from the very types the handlers serialize and the paths from
//! the handlers' annotations. Two things it cannot say by itself are added here: the request
//! body schema (the same shape as the stored, normalized request, but with every field except
//! `brief.topic` optional), and one schema per event type (`jobId` and `at` plus the type's own
//! fields), which the SSE endpoints reference.

use std::sync::OnceLock;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::http::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Aura", description = "Briefs in, rendered videos out; every step of every job streamed over lossless Server-Sent Events."),
    paths(
        crate::http::jobs::create, crate::http::jobs::list, crate::http::jobs::show, crate::http::jobs::cancel, crate::http::jobs::remove, crate::http::jobs::history,
        crate::http::jobs::output, crate::http::events::job_events, crate::http::events::all_events, crate::http::ws::websocket, crate::http::health::health, crate::http::health::metrics,
        crate::http::webhooks::create, crate::http::webhooks::list, crate::http::webhooks::remove,
        crate::http::webhooks::deliveries, crate::http::webhooks::rotate,
    ),
    components(schemas(
        crate::domain::event::JobStatusData, crate::domain::event::StepStatusData, crate::domain::event::StepProgressData,
        crate::domain::event::JobCompletedData, crate::domain::event::JobFailedData, crate::domain::event::JobCancelledData,
        crate::domain::event::NoticeData, crate::domain::event::JobOutput, crate::domain::event::JobError, crate::domain::event::StepState,
        crate::domain::job::Stage, crate::domain::job::JobStatus,
    )),
    tags(
        (name = "jobs", description = "Create, read, list, cancel and delete jobs"),
        (name = "events", description = "Server-Sent Events streams (optionally batched with `?batch=` and gzip-compressed with `AURA_STREAM_COMPRESSION=gzip`), and the same events over a WebSocket at `/api/ws`"),
        (name = "operations", description = "Health and metrics"),
        (name = "webhooks", description = "The event log POSTed to your endpoints, signed (Standard Webhooks)"),
    )
)]
struct ApiDoc;

/// The event types and the schema of each one's own fields.
const EVENT_SCHEMAS: [(&str, &str, &str); 8] = [
    ("job-status", "JobStatusEvent", "JobStatusData"),
    ("step-status", "StepStatusEvent", "StepStatusData"),
    ("step-progress", "StepProgressEvent", "StepProgressData"),
    ("job-completed", "JobCompletedEvent", "JobCompletedData"),
    ("job-failed", "JobFailedEvent", "JobFailedData"),
    ("job-cancelled", "JobCancelledEvent", "JobCancelledData"),
    ("warning", "WarningEvent", "NoticeData"),
    ("error", "ErrorEvent", "NoticeData"),
];

/// The finished document.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
        add_request_schemas(&mut doc);
        add_video_content(&mut doc);
        add_event_schemas(&mut doc);
        add_access(&mut doc);
        doc
    })
}

/// The schema name of an event type's `data`, e.g. `StepProgressEvent` for `step-progress`.
pub fn event_schema_name(event_type: &str) -> Option<&'static str> {
    EVENT_SCHEMAS.iter().find(|(t, _, _)| *t == event_type).map(|(_, name, _)| *name)
}

fn add_request_schemas(doc: &mut Value) {
    const PARTS: [(&str, &str); 5] = [
        ("JobSpec", "JobRequest"),
        ("Brief", "BriefRequest"),
        ("PlanSpec", "PlanSpecRequest"),
        ("VoiceSpec", "VoiceSpecRequest"),
        ("RenderSpec", "RenderSpecRequest"),
    ];
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) else { return };
    for (from, to) in PARTS {
        let Some(mut schema) = schemas.get(from).cloned() else { continue };
        let mut text = schema.to_string();
        for (f, t) in PARTS {
            text = text
                .replace(&format!("\"#/components/schemas/{f}\""), &format!("\"#/components/schemas/{t}\""));
        }
        schema = serde_json::from_str(&text).unwrap_or(schema);
        if let Some(obj) = schema.as_object_mut() {
            match to {
                "JobRequest" => obj.insert("required".into(), json!(["brief"])),
                "BriefRequest" => obj.insert("required".into(), json!(["topic"])),
                _ => obj.remove("required"),
            };
        }
        schemas.insert(to.to_owned(), schema);
    }
    if let Some(body) =
        doc.pointer_mut("/paths/~1api~1jobs/post/requestBody/content/application~1json/schema")
    {
        *body = json!({"$ref": "#/components/schemas/JobRequest"});
    }
}

/// The output route answers with the video itself, in whichever container the job asked for:
/// its body is binary in each of the three media types, which the annotation cannot say.
fn add_video_content(doc: &mut Value) {
    let video: serde_json::Map<String, Value> = crate::domain::spec::Container::ALL
        .iter()
        .map(|c| (c.mime().to_owned(), json!({"schema": {"type": "string", "contentMediaType": c.mime()}})))
        .collect();
    for status in ["200", "206"] {
        let pointer = format!("/paths/~1api~1jobs~1{{job_id}}~1output/get/responses/{status}/content");
        if let Some(content) = doc.pointer_mut(&pointer) {
            *content = Value::Object(video.clone());
        }
    }
}

fn add_event_schemas(doc: &mut Value) {
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) else { return };
    schemas.insert(
        "EventEnvelope".into(),
        json!({
            "type": "object",
            "required": ["jobId", "at"],
            "properties": {
                "jobId": {"type": "string", "format": "uuid"},
                "at": {"type": "string", "format": "date-time", "description": "When the event was appended (RFC 3339 UTC, microseconds)"}
            }
        }),
    );
    for (event_type, name, own) in EVENT_SCHEMAS {
        schemas.insert(
            name.to_owned(),
            json!({
                "description": format!("`data` of a `{event_type}` event"),
                "allOf": [
                    {"$ref": "#/components/schemas/EventEnvelope"},
                    {"$ref": format!("#/components/schemas/{own}")}
                ]
            }),
        );
    }
    let one_of: Vec<Value> = EVENT_SCHEMAS
        .iter()
        .map(|(_, name, _)| json!({"$ref": format!("#/components/schemas/{name}")}))
        .collect();
    schemas.insert(
        "EventData".into(),
        json!({"description": "The `data` of any event; the SSE `event:` field says which", "oneOf": one_of}),
    );
}

/// Credentials (`auth`) and per-owner limits (`limits`), added to every operation they apply to,
/// plus the session routes.
fn add_access(doc: &mut Value) {
    let problem = |description: &str| json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    if let Some(components) = doc.pointer_mut("/components").and_then(Value::as_object_mut) {
        components.insert(
            "securitySchemes".into(),
            json!({
                "bearer": {"type": "http", "scheme": "bearer", "description": "A token from `aura token create` (only when the server has tokens)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "aura_session", "description": "From POST /api/session"}
            }),
        );
    }
    let Some(paths) = doc.pointer_mut("/paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        if path == "/api/health" {
            continue;
        }
        let Some(item) = item.as_object_mut() else { continue };
        for (method, operation) in item.iter_mut() {
            let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            responses.insert(
                "401".into(),
                problem("No or unknown credentials (servers with tokens); `WWW-Authenticate: Bearer`"),
            );
            if path.contains("{job_id}") || path == "/api/events" {
                responses.insert("403".into(), problem("The job belongs to another owner"));
            } else if path == "/metrics" {
                responses.insert("403".into(), problem("Not an admin token"));
            }
            let per_owner =
                path.ends_with("/events") || path == "/api/ws" || (path == "/api/jobs" && method == "post");
            responses.insert(
                "429".into(),
                problem(if per_owner {
                    "A per-owner limit, or too many unknown credentials from this client address; \
                     `Retry-After` says when to try again"
                } else {
                    "Too many unknown credentials from this client address; `Retry-After` says when to \
                     try again"
                }),
            );
            if let Some(op) = operation.as_object_mut() {
                op.insert("security".into(), json!([{}, {"bearer": []}, {"session": []}]));
            }
        }
    }
    paths.insert(
        "/api/session".into(),
        json!({
            "post": {
                "tags": ["operations"],
                "summary": "Trade a token for the aura_session cookie (browsers)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}}}},
                "responses": {
                    "204": {"description": "Signed in; Set-Cookie: aura_session=…; HttpOnly; SameSite=Strict; Path=/"},
                    "400": problem("Malformed JSON"),
                    "401": problem("Not a valid token"),
                    "429": problem("Too many unknown credentials from this client address; `Retry-After` says when to try again")
                }
            },
            "delete": {
                "tags": ["operations"],
                "summary": "End this browser session and clear the cookie",
                "responses": {"204": {"description": "Signed out; the cookie is cleared (Max-Age=0)"}}
            }
        }),
    );
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(serve))
}

async fn serve() -> Response {
    axum::Json(document()).into_response()
}
