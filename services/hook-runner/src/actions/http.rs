//! `http`: one request with retries (exponential backoff, full jitter, `Retry-After`
//! honoured up to the cap), 410 Gone stops at once, Standard Webhooks signing, and
//! a guard that refuses loopback, private, link-local and other non-public
//! addresses unless the rule allows them. The guard sits in the DNS resolver, so the
//! address checked is the address connected to; redirects are not followed and
//! proxies from the environment are not used, so neither can step around it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderName, HeaderValue};
use switchboard_proto::hook::v1::ActionResult;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use super::{capped, result};
use crate::Error;
use crate::render::RenderedHttp;
use crate::rules::HttpAction;

/// True for addresses on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0))
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    !(v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

/// A resolver that keeps only public addresses.
#[derive(Debug)]
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves only to loopback or private addresses (set allow_private_network on the rule to allow)"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// The two HTTP clients: one guarded, one for rules that allow private addresses.
#[derive(Debug, Clone)]
pub struct Clients {
    guarded: reqwest::Client,
    open: reqwest::Client,
}

impl Clients {
    /// Builds both clients.
    pub fn new() -> Result<Self, Error> {
        let base = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(concat!("switchboard-hook-runner/", env!("CARGO_PKG_VERSION")))
        };
        let build_error = |e: reqwest::Error| Error::Action(format!("cannot build the HTTP client: {e}"));
        Ok(Self {
            guarded: base().dns_resolver(Arc::new(PublicOnly)).build().map_err(build_error)?,
            open: base().build().map_err(build_error)?,
        })
    }
}

/// The delay before retry number `retry` (0 = first retry): exponential with full
/// jitter in `[d/2, d]`, at most `max`.
pub fn backoff(base: Duration, max: Duration, retry: u32) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(retry.min(20))).min(max);
    let half = exp / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = OffsetDateTime::parse(value, &Rfc2822).ok()?;
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

fn host_is_literal_private(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(v4)) => !is_public(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => !is_public(IpAddr::V6(v6)),
        _ => false,
    }
}

/// Sends the request, retrying as the action says. `message_id` is the stable
/// `webhook-id` of every attempt.
pub async fn run(
    clients: &Clients,
    name: &str,
    action: &HttpAction,
    spec: &RenderedHttp,
    message_id: &str,
) -> ActionResult {
    let started = Instant::now();
    let mut r = result(name, "http", started);
    let url = match reqwest::Url::parse(&spec.url) {
        Ok(url) => url,
        Err(e) => {
            r.error = format!("bad URL {:?}: {e}", spec.url);
            return r;
        }
    };
    if !action.allow_private_network && host_is_literal_private(&url) {
        r.error = format!("{url} is a loopback or private address (set allow_private_network on the rule to allow)");
        return r;
    }
    let client = if action.allow_private_network {
        &clients.open
    } else {
        &clients.guarded
    };
    let method = reqwest::Method::from_bytes(spec.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let body = spec.body.clone().unwrap_or_default();
    let attempts = action.retries.saturating_add(1);
    for attempt in 1..=attempts {
        r.attempts = attempt;
        let mut request = client.request(method.clone(), url.clone()).timeout(action.timeout);
        for (k, v) in &spec.headers {
            match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                (Ok(k), Ok(v)) => request = request.header(k, v),
                _ => {
                    r.error = format!("header {k} is not a valid header");
                    return r;
                }
            }
        }
        if spec.json {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        if let Some(secret) = &action.secret {
            match super::sign::sign(
                secret.expose(),
                message_id,
                OffsetDateTime::now_utc().unix_timestamp(),
                body.as_bytes(),
            ) {
                Ok(s) => {
                    request = request
                        .header("webhook-id", s.id)
                        .header("webhook-timestamp", s.timestamp.to_string())
                        .header("webhook-signature", s.signature);
                }
                Err(e) => {
                    r.error = e.to_string();
                    return r;
                }
            }
        }
        if spec.body.is_some() {
            request = request.body(body.clone());
        }
        let mut wait = None;
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                r.status_code = u32::from(status.as_u16());
                wait = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, OffsetDateTime::now_utc()));
                let bytes = response.bytes().await.unwrap_or_default();
                let (output, truncated) = capped(&bytes, action.output_limit);
                r.output = output;
                r.truncated = truncated;
                if status.is_success() {
                    r.success = true;
                    r.error.clear();
                    break;
                }
                r.error = format!("HTTP {status}");
                let retryable = status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT;
                if status == reqwest::StatusCode::GONE || !retryable {
                    break;
                }
            }
            Err(e) => {
                r.status_code = 0;
                r.error = error_chain(&e);
                if e.is_builder() {
                    break;
                }
            }
        }
        if attempt < attempts {
            let delay = backoff(action.backoff, action.max_backoff, attempt - 1);
            let delay = wait.map_or(delay, |w| w.max(delay)).min(action.max_backoff);
            tokio::time::sleep(delay).await;
        }
    }
    r.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    r
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_public(ip), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_public(ip), "{ip}");
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for retry in 0..10 {
            let d = backoff(base, max, retry);
            let full = (base * 2u32.pow(retry)).min(max);
            assert!(d >= full / 2 && d <= full, "{retry}: {d:?}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        let later = "Tue, 14 Nov 2023 22:13:40 GMT";
        assert_eq!(retry_after(later, now), Some(Duration::from_secs(20)));
        assert_eq!(retry_after("soon", now), None);
    }

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use switchboard_bus::Secret;

    use crate::rules::HttpBody;

    /// A status and an optional `Retry-After`.
    type Answer = (u16, Option<&'static str>);

    /// Answers with the statuses in order (then 200) and records every request.
    #[derive(Clone, Default)]
    struct Server {
        statuses: Arc<Mutex<Vec<Answer>>>,
        seen: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    }

    async fn handle(State(server): State<Server>, headers: HeaderMap, body: String) -> (StatusCode, HeaderMap, String) {
        server.seen.lock().unwrap().push((headers, body));
        let next = {
            let mut statuses = server.statuses.lock().unwrap();
            if statuses.is_empty() {
                (200, None)
            } else {
                statuses.remove(0)
            }
        };
        let mut out = HeaderMap::new();
        if let Some(after) = next.1 {
            out.insert("retry-after", after.parse().unwrap());
        }
        (StatusCode::from_u16(next.0).unwrap(), out, "answer".to_owned())
    }

    async fn serve(statuses: Vec<Answer>) -> (String, Server) {
        let server = Server::default();
        *server.statuses.lock().unwrap() = statuses;
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), server)
    }

    fn action(allow: bool, retries: u32) -> HttpAction {
        HttpAction {
            method: "POST".into(),
            url: crate::template::Text::Literal(String::new()),
            headers: BTreeMap::new(),
            body: HttpBody::Empty,
            timeout: Duration::from_secs(5),
            retries,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            secret: Some(Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
            allow_private_network: allow,
            output_limit: 1024,
        }
    }

    fn spec(url: &str) -> RenderedHttp {
        RenderedHttp {
            method: "POST".into(),
            url: url.to_owned(),
            headers: BTreeMap::from([("x-rule".to_owned(), "r1".to_owned())]),
            body: Some(r#"{"a":1}"#.into()),
            json: true,
            signed: true,
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let (url, server) = serve(vec![]).await;
        let clients = Clients::new().unwrap();
        let r = run(&clients, "h", &action(false, 0), &spec(&url), "msg_1").await;
        assert!(!r.success && r.error.contains("private"), "{}", r.error);
        let by_name = url.replace("127.0.0.1", "localhost");
        let r = run(&clients, "h", &action(false, 0), &spec(&by_name), "msg_1").await;
        assert!(!r.success && r.error.contains("private"), "{}", r.error);
        assert!(server.seen.lock().unwrap().is_empty());
        let r = run(&clients, "h", &action(true, 0), &spec(&url), "msg_1").await;
        assert!(r.success, "{r:?}");
        assert_eq!(r.output, "answer");
    }

    #[tokio::test]
    async fn retries_honour_retry_after_and_sign_every_attempt() {
        let (url, server) = serve(vec![(503, Some("0")), (429, None)]).await;
        let clients = Clients::new().unwrap();
        let r = run(
            &clients,
            "h",
            &action(true, 3),
            &spec(&url),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
        )
        .await;
        assert!(r.success, "{r:?}");
        assert_eq!(r.attempts, 3);
        assert_eq!(r.status_code, 200);
        let seen = server.seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for (headers, body) in seen.iter() {
            assert_eq!(body, r#"{"a":1}"#);
            assert_eq!(headers["x-rule"], "r1");
            assert_eq!(headers["content-type"], "application/json");
            assert_eq!(headers["webhook-id"], "msg_p5jXN8AQM9LWM0D4loKWxJek");
            let timestamp: i64 = headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
            let expected = super::super::sign::sign(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                timestamp,
                body.as_bytes(),
            )
            .unwrap();
            assert_eq!(headers["webhook-signature"].to_str().unwrap(), expected.signature);
        }
    }

    #[tokio::test]
    async fn gone_and_client_errors_stop_retrying() {
        let (url, server) = serve(vec![(410, None), (500, None)]).await;
        let clients = Clients::new().unwrap();
        let r = run(&clients, "h", &action(true, 5), &spec(&url), "m").await;
        assert!(!r.success);
        assert_eq!((r.attempts, r.status_code), (1, 410));
        assert_eq!(server.seen.lock().unwrap().len(), 1);

        let (url, server) = serve(vec![(500, None), (500, None), (500, None)]).await;
        let r = run(&clients, "h", &action(true, 2), &spec(&url), "m").await;
        assert!(!r.success);
        assert_eq!((r.attempts, r.status_code), (3, 500));
        assert_eq!(server.seen.lock().unwrap().len(), 3);
    }
}
