//! The chat widget and the admin console: static files embedded in the binary
//! (`web/`), served with a strict Content-Security-Policy. The widget script is
//! ws-push's JS client followed by the widget, so one script tag embeds both.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::config::WidgetConfig;

/// `/widget/switchboard-chat.js`: ws-push's client (the same file ws-push serves as
/// `/client.js`), then the widget.
pub const WIDGET_JS: &str = concat!(
    include_str!("../../ws-push/static/switchboard-push.js"),
    "\n",
    include_str!("../web/switchboard-chat.js")
);
/// `/widget/switchboard-chat.d.ts`: TypeScript declarations of the widget's API.
pub const WIDGET_TYPES: &str = include_str!("../web/switchboard-chat.d.ts");
/// `/widget/switchboard-chat.css`.
pub const WIDGET_CSS: &str = include_str!("../web/switchboard-chat.css");
/// `/widget/demo.html`: a page embedding the widget.
pub const DEMO_HTML: &str = include_str!("../web/demo.html");
/// `/widget/demo.js`: the demo page's script (no inline scripts under the CSP).
pub const DEMO_JS: &str = include_str!("../web/demo.js");
/// `/admin/`: the admin console.
pub const ADMIN_HTML: &str = include_str!("../web/admin.html");
/// `/admin/admin.js`.
pub const ADMIN_JS: &str = include_str!("../web/admin.js");
/// `/admin/admin.css`.
pub const ADMIN_CSS: &str = include_str!("../web/admin.css");

/// The Content-Security-Policy of the pages: scripts, styles and fonts from this
/// server only, no inline code, images from here or `blob:`/`data:` (attachments are
/// fetched with the token and shown as blob URLs), connections to this server and
/// to ws-push's origin.
pub fn content_security_policy(widget: &WidgetConfig) -> String {
    let mut connect = String::from("'self'");
    let push = widget.push_origin();
    if !push.is_empty() {
        connect.push(' ');
        connect.push_str(push);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The page and asset routes (no auth: they hold no data; the API checks callers).
pub fn router(widget: &WidgetConfig) -> Router {
    let csp = HeaderValue::from_str(&content_security_policy(widget))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    let page = move |body: &'static str| {
        let csp = csp.clone();
        move || {
            let csp = csp.clone();
            async move { asset("text/html; charset=utf-8", body, Some(csp)) }
        }
    };
    Router::new()
        .route(
            "/widget/switchboard-chat.js",
            get(|| async { asset("text/javascript; charset=utf-8", WIDGET_JS, None) }),
        )
        .route(
            "/widget/switchboard-chat.css",
            get(|| async { asset("text/css; charset=utf-8", WIDGET_CSS, None) }),
        )
        .route(
            "/widget/switchboard-chat.d.ts",
            get(|| async { asset("text/plain; charset=utf-8", WIDGET_TYPES, None) }),
        )
        .route("/widget/demo.html", get(page(DEMO_HTML)))
        .route(
            "/widget/demo.js",
            get(|| async { asset("text/javascript; charset=utf-8", DEMO_JS, None) }),
        )
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(page(ADMIN_HTML)))
        .route(
            "/admin/admin.js",
            get(|| async { asset("text/javascript; charset=utf-8", ADMIN_JS, None) }),
        )
        .route(
            "/admin/admin.css",
            get(|| async { asset("text/css; charset=utf-8", ADMIN_CSS, None) }),
        )
}

fn asset(content_type: &'static str, body: &'static str, csp: Option<HeaderValue>) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response();
    if let Some(csp) = csp {
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_push_origin_and_nothing_inline() {
        let widget = WidgetConfig {
            push_url: "wss://push.example.com:8443/ws?x=1".into(),
            allowed_origins: vec![],
        };
        let csp = content_security_policy(&widget);
        assert!(csp.contains("connect-src 'self' wss://push.example.com:8443;"), "{csp}");
        assert!(csp.contains("script-src 'self';"));
        assert!(!csp.contains("unsafe"));
        let none = content_security_policy(&WidgetConfig::default());
        assert!(none.contains("connect-src 'self';"), "{none}");
    }
}
