//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`.

use serde_json::{Value, json};

/// `(method, path, summary, who may call)` of every route.
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("get", "/api/v1/me", "Who the token says the caller is", "user"),
    (
        "post",
        "/api/v1/messages",
        "Send a message (idempotent per clientId)",
        "user",
    ),
    (
        "patch",
        "/api/v1/messages/{id}",
        "Edit one's own message within the edit window",
        "user",
    ),
    (
        "delete",
        "/api/v1/messages/{id}",
        "Delete one's own message within the edit window",
        "user",
    ),
    (
        "get",
        "/api/v1/messages/{id}/translation",
        "Translate a message (?lang=)",
        "user",
    ),
    (
        "get",
        "/api/v1/dialogs",
        "Dialogs with last message and unread count (?filter=all|favourites|blocked)",
        "user",
    ),
    (
        "get",
        "/api/v1/dialogs/{peer}/messages",
        "History with a peer, newest first, cursor-paged",
        "user",
    ),
    (
        "post",
        "/api/v1/dialogs/{peer}/read",
        "Mark the peer's messages read up to upToMessageId",
        "user",
    ),
    (
        "post",
        "/api/v1/dialogs/{peer}/delivered",
        "Mark the peer's messages delivered up to upToMessageId",
        "user",
    ),
    (
        "post",
        "/api/v1/dialogs/{peer}/typing",
        "Tell the peer one is typing (ephemeral)",
        "user",
    ),
    (
        "get",
        "/api/v1/unread",
        "Unread messages, in total or from ?peer=",
        "user",
    ),
    (
        "get",
        "/api/v1/relations/{kind}",
        "Users one marked favourite or blocked",
        "user",
    ),
    (
        "put",
        "/api/v1/relations/{kind}/{other}",
        "Mark a user favourite or blocked",
        "user",
    ),
    (
        "delete",
        "/api/v1/relations/{kind}/{other}",
        "Clear a favourite or block",
        "user",
    ),
    (
        "post",
        "/api/v1/complaints",
        "Complain about a user or a message",
        "user",
    ),
    (
        "get",
        "/api/v1/search",
        "Full-text search in one's own messages (?q=)",
        "user",
    ),
    (
        "get",
        "/api/v1/contacts",
        "Contact search by name or login prefix (?q=)",
        "user",
    ),
    (
        "get",
        "/api/v1/users",
        "User details (?ids=1,2), cached from the site",
        "user",
    ),
    (
        "get",
        "/api/v1/admin/messages",
        "Monitor: all messages, one user's (?user=), a dialog (?user=&peer=), ?attachmentsOnly=true",
        "admin",
    ),
    ("delete", "/api/v1/admin/messages/{id}", "Remove any message", "admin"),
    (
        "get",
        "/api/v1/admin/complaints",
        "Complaints (?state=open|resolved)",
        "admin",
    ),
    (
        "post",
        "/api/v1/admin/complaints/{id}/resolve",
        "Resolve a complaint",
        "admin",
    ),
    (
        "delete",
        "/api/v1/manage/users/{id}",
        "Erase a user and their files",
        "management",
    ),
    (
        "get",
        "/api/v1/manage/admins",
        "Admins set through the management API",
        "management",
    ),
    (
        "put",
        "/api/v1/manage/admins",
        "Replace the admins set through the management API",
        "management",
    ),
];

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, who) in ROUTES {
        let security = match *who {
            "management" => json!([{ "apiKey": [] }]),
            _ => json!([{ "bearer": [] }, { "userKey": [] }]),
        };
        let parameters: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = json!({
            "summary": summary,
            "description": format!("Caller: {who}. Bodies are the proto3 JSON of switchboard.chat.v1 messages."),
            "security": security,
            "parameters": parameters,
            "responses": {
                "200": { "description": "OK (JSON)" },
                "400": { "$ref": "#/components/responses/Error" },
                "401": { "$ref": "#/components/responses/Error" },
                "403": { "$ref": "#/components/responses/Error" },
                "404": { "$ref": "#/components/responses/Error" },
                "429": { "$ref": "#/components/responses/Error" }
            }
        });
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Switchboard chat-store",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Private one-to-one chat for a website. Text is returned exactly as sent: render it as text, never as HTML."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT (HS256: sub, admin, exp)" },
                "userKey": { "type": "apiKey", "in": "header", "name": "X-Chat-Key", "description": "With X-Chat-User: the key the site gave the user's page" },
                "apiKey": { "type": "http", "scheme": "bearer", "description": "management.api_key, from a trusted IP" }
            },
            "responses": {
                "Error": {
                    "description": "An error",
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "properties": {
                            "code": { "type": "string", "example": "ERROR_CODE_PERMISSION_DENIED" },
                            "reason": { "type": "string", "example": "blocked" },
                            "message": { "type": "string" }
                        }
                    } } }
                }
            }
        }
    })
}
