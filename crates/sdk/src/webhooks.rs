//! Calls the gate webhooks of the server's WebhookConfiguration when [`super::gates`] says so,
//! and sets the gate conditions their answers name. One POST of seed 002's WebhookReview per
//! connection, over http or https (the webhook's `caBundle`, else the system's roots).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::rustls;

use super::gates::{self, Call, Outcome, Schedule};
use super::writer::Sdk;
use crate::api::{GameServer, GateWebhook, GateWebhookType, WebhookConfigurationSpec, WebhookRequest, WebhookReview};

/// Largest answer read from a webhook.
const MAX_ANSWER: usize = 64 * 1024;

/// Why a call brought no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// `clientConfig` does not say where the webhook is.
    #[error("clientConfig: {0}")]
    Config(String),
    /// No connection, or it broke.
    #[error("cannot reach it: {0}")]
    Connect(String),
    /// No answer within `timeoutSeconds`.
    #[error("no answer within {0} s (timeoutSeconds)")]
    Timeout(u64),
    /// An HTTP status other than 2xx.
    #[error("answered HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// A 2xx answer that is not a WebhookReview with a response.
    #[error("the answer is not a WebhookReview with a response for uid {uid}: {why}")]
    Answer {
        /// The request's uid.
        uid: String,
        /// What is wrong.
        why: String,
    },
}

/// Where a webhook is: `url`, or its Service's in-cluster name.
pub fn url(webhook: &GateWebhook) -> Result<String, CallError> {
    let c = &webhook.client_config;
    match (&c.url, &c.service) {
        (Some(url), None) => Ok(url.clone()),
        (None, Some(s)) => {
            let path = s.path.as_deref().unwrap_or("/");
            let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
            Ok(format!("https://{}.{}.svc:{}{path}", s.name, s.namespace, s.port.unwrap_or(443)))
        }
        _ => Err(CallError::Config("set exactly one of url or service".into())),
    }
}

/// The TLS setup for a webhook: its `caBundle` (PEM), else the system's roots.
fn tls(webhook: &GateWebhook) -> Result<Arc<rustls::ClientConfig>, CallError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match webhook.client_config.ca_bundle.as_deref().filter(|b| !b.trim().is_empty()) {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| CallError::Config(format!("caBundle is not PEM certificates: {e}")))?;
                roots.add(cert).map_err(|e| CallError::Config(format!("caBundle: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(CallError::Config("no CA certificates: set caBundle to the PEM that signs the webhook".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CallError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// POSTs `review` to `url` and returns the status and body.
async fn post(webhook: &GateWebhook, url: &str, review: &WebhookReview) -> Result<(u16, Bytes), CallError> {
    let uri: http::Uri = url.parse().map_err(|e| CallError::Config(format!("url {url:?}: {e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(CallError::Config(format!("url {url:?} must start with https:// or http://"))),
    };
    let host = uri.host().ok_or_else(|| CallError::Config(format!("url {url:?} has no host")))?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let body = serde_json::to_vec(review).expect("a review serializes");
    let request = Request::post(path)
        .header(http::header::HOST, uri.authority().map_or(host.as_str(), |a| a.as_str()))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| CallError::Config(format!("url {url:?}: {e}")))?;
    // A bad caBundle is reported as such, before any connection.
    let tls_config = if https { Some(tls(webhook)?) } else { None };
    let tcp = tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(|e| CallError::Connect(e.to_string()))?;
    if let Some(tls_config) = tls_config {
        let name =
            rustls_pki_types::ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
                .map_err(|e| CallError::Config(format!("url {url:?}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls_config)
            .connect(name, tcp)
            .await
            .map_err(|e| CallError::Connect(format!("TLS: {e}")))?;
        exchange(stream, request).await
    } else {
        exchange(tcp, request).await
    }
}

async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<(u16, Bytes), CallError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| CallError::Connect(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| CallError::Connect(e.to_string()))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| CallError::Connect(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    conn.abort();
    result
}

/// Asks `webhook` about `server` with `constraints`, within its timeout.
pub async fn call(webhook: &GateWebhook, review: &WebhookReview) -> Result<Outcome, CallError> {
    let url = url(webhook)?;
    let limit = gates::timeout(webhook);
    let (status, body) = tokio::time::timeout(limit, post(webhook, &url, review))
        .await
        .map_err(|_| CallError::Timeout(limit.as_secs()))??;
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(CallError::Status { status, body: text });
    }
    // Carrier does not read a ConstraintWebhook's answer: any 2xx is heard.
    if webhook.type_ == GateWebhookType::ConstraintWebhook {
        return Ok(Outcome::Answered { allowed: true, reason: None });
    }
    let uid = review.request.as_ref().map(|r| r.uid.clone()).unwrap_or_default();
    let answer: WebhookReview = serde_json::from_slice(&body)
        .map_err(|e| CallError::Answer { uid: uid.clone(), why: format!("not JSON of that shape: {e}") })?;
    let response =
        answer.response.ok_or_else(|| CallError::Answer { uid: uid.clone(), why: "no \"response\"".into() })?;
    if response.uid != uid {
        return Err(CallError::Answer { uid, why: format!("its response is for uid {:?}", response.uid) });
    }
    Ok(Outcome::Answered { allowed: response.allowed, reason: response.reason })
}

/// A request uid unique in this sidecar and across its restarts.
fn uid(server: &GameServer) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{}-{started:x}-{n}", server.metadata.uid.as_deref().unwrap_or("local"))
}

/// Up to a tenth of a second, from the clock: enough to keep failing sidecars apart.
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    Duration::from_millis(u64::from(nanos % 100))
}

/// Polls the webhooks of the configuration `configs` holds (none: nothing to do) for the
/// server `sdk` serves, until the sidecar stops. A new configuration starts a new schedule.
pub async fn run(sdk: Arc<Sdk>, mut configs: watch::Receiver<Option<WebhookConfigurationSpec>>) {
    let mut servers = sdk.subscribe();
    loop {
        let config = configs.borrow_and_update().clone();
        let mut schedule = config.as_ref().map(Schedule::new);
        let mut calls: JoinSet<(Call, Result<Outcome, CallError>)> = JoinSet::new();
        let mut constraints = sdk.server().spec.constraints.clone();
        loop {
            let server = sdk.server();
            if server.spec.constraints != constraints {
                constraints = server.spec.constraints.clone();
                if let Some(s) = schedule.as_mut() {
                    s.constraints_changed(&constraints);
                }
            }
            let now = tokio::time::Instant::now();
            let mut wake = None;
            if let Some(s) = schedule.as_mut() {
                for c in s.due(&constraints, now.into_std()) {
                    let webhook = s.webhook(c.index).clone();
                    let review = WebhookReview {
                        request: Some(WebhookRequest {
                            uid: uid(&server),
                            name: server.metadata.name.clone().unwrap_or_default(),
                            namespace: server.metadata.namespace.clone().unwrap_or_default(),
                            constraints: c.constraints.clone(),
                        }),
                        response: None,
                    };
                    tracing::debug!(webhook = %webhook.name, kind = ?webhook.type_, "calling gate webhook");
                    calls.spawn(async move {
                        let outcome = call(&webhook, &review).await;
                        (c, outcome)
                    });
                }
                wake = s.next_wake(&constraints);
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = configs.changed() => {
                    if r.is_err() {
                        return;
                    }
                    match configs.borrow().as_ref() {
                        Some(c) => tracing::info!(webhooks = c.webhooks.len(), "WebhookConfiguration read; polling its webhooks afresh"),
                        None => tracing::info!("no WebhookConfiguration; no webhooks polled"),
                    }
                    break;
                }
                r = servers.changed() => if r.is_err() { return },
                () = sleep => {}
                Some(done) = calls.join_next(), if !calls.is_empty() => {
                    let Ok((c, result)) = done else { continue };
                    let Some(s) = schedule.as_mut() else { continue };
                    let webhook = s.webhook(c.index).clone();
                    let outcome = match result {
                        Ok(o) => o,
                        Err(e) => {
                            let url = url(&webhook).unwrap_or_else(|_| "(no url)".into());
                            tracing::warn!(webhook = %webhook.name, url = %url, error = %e,
                                "gate webhook failed; its gate stays as it is, trying again later");
                            Outcome::Failed
                        }
                    };
                    let now = tokio::time::Instant::now().into_std();
                    if let Some(change) = s.answered(&c, &outcome, now, jitter()) {
                        let l = &sdk.server().spec.lifecycle;
                        if l.readiness_gates.iter().chain(&l.deletable_gates).any(|g| *g == change.gate) {
                            tracing::debug!(gate = %change.gate, allowed = change.allowed, "gate webhook answered");
                            sdk.set_gate(&change.gate, change.allowed, change.message);
                        } else {
                            tracing::warn!(webhook = %webhook.name,
                                "the webhook's name is none of this server's readinessGates or deletableGates; its answer sets nothing");
                        }
                    } else if webhook.type_ == GateWebhookType::ConstraintWebhook && outcome != Outcome::Failed {
                        tracing::info!(webhook = %webhook.name, constraints = c.constraints.len(), "constraints told");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GateWebhookClient;
    use axum::routing::post;
    use serde_json::{Value, json};

    fn hook(url: String, type_: GateWebhookType, ca_bundle: Option<String>) -> GateWebhook {
        GateWebhook {
            name: "server-ready".into(),
            type_,
            client_config: GateWebhookClient { url: Some(url), service: None, ca_bundle },
            timeout_seconds: Some(1),
            period_seconds: None,
            request_policy: None,
        }
    }

    fn review(uid: &str) -> WebhookReview {
        WebhookReview {
            request: Some(WebhookRequest {
                uid: uid.into(),
                name: "z1-game-1".into(),
                namespace: "ns".into(),
                constraints: vec![],
            }),
            response: None,
        }
    }

    /// An HTTP server on loopback whose routes answer as the tests need.
    async fn serve(app: axum::Router) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    fn routes() -> axum::Router {
        axum::Router::new()
            .route("/echo", post(|axum::Json(v): axum::Json<Value>| async move {
                let uid = v["request"]["uid"].clone();
                axum::Json(json!({"response": {"uid": uid, "allowed": v["request"]["name"] == "z1-game-1", "reason": "seen"}}))
            }))
            .route("/other-uid", post(|| async { axum::Json(json!({"response": {"uid": "x", "allowed": true}})) }))
            .route("/not-json", post(|| async { "ok" }))
            .route("/broken", post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "db down") }))
            .route("/slow", post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }))
    }

    #[tokio::test]
    async fn a_review_goes_out_and_the_answer_comes_back_or_the_failure_says_what() {
        let port = serve(routes()).await;
        let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
        let ask = |p: &str, t| call_of(hook(url(p), t, None));
        assert_eq!(
            ask("/echo", GateWebhookType::ReadinessWebhook).await.unwrap(),
            Outcome::Answered { allowed: true, reason: Some("seen".into()) }
        );
        let e = ask("/other-uid", GateWebhookType::ReadinessWebhook).await.unwrap_err().to_string();
        assert!(e.contains("for uid \"x\""), "{e}");
        let e = ask("/not-json", GateWebhookType::DeletableWebhook).await.unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
        // A ConstraintWebhook's answer is not read: any 2xx is heard.
        assert!(ask("/not-json", GateWebhookType::ConstraintWebhook).await.is_ok());
        let e = ask("/broken", GateWebhookType::ConstraintWebhook).await.unwrap_err().to_string();
        assert_eq!(e, "answered HTTP 500: db down");
        let e = ask("/slow", GateWebhookType::ReadinessWebhook).await.unwrap_err().to_string();
        assert_eq!(e, "no answer within 1 s (timeoutSeconds)");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = call_of(hook(format!("http://127.0.0.1:{closed}/"), GateWebhookType::ReadinessWebhook, None)).await;
        assert!(e.unwrap_err().to_string().starts_with("cannot reach it"));
        let e = call_of(hook("ftp://x/".into(), GateWebhookType::ReadinessWebhook, None)).await.unwrap_err();
        assert!(e.to_string().contains("must start with https:// or http://"), "{e}");
    }

    async fn call_of(webhook: GateWebhook) -> Result<Outcome, CallError> {
        call(&webhook, &review("u-1")).await
    }

    #[tokio::test]
    async fn https_trusts_the_ca_bundle_and_only_it() {
        let bundle = gamezone::webhook::tls::generate(&["localhost".into()], Duration::from_secs(3600), None).unwrap();
        let slot = Arc::new(gamezone::webhook::tls::CertSlot::default());
        slot.load(&bundle).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        gamezone::webhook::server::serve_router(addr, slot, routes()).await.unwrap();
        let url = format!("https://localhost:{}/echo", addr.port());
        let trusted = hook(url.clone(), GateWebhookType::ReadinessWebhook, Some(bundle.ca_pem.clone()));
        assert_eq!(call_of(trusted).await.unwrap(), Outcome::Answered { allowed: true, reason: Some("seen".into()) });
        let other = gamezone::webhook::tls::generate(&["localhost".into()], Duration::from_secs(3600), None).unwrap();
        let untrusted = hook(url, GateWebhookType::ReadinessWebhook, Some(other.ca_pem));
        let e = call_of(untrusted).await.unwrap_err().to_string();
        assert!(e.starts_with("cannot reach it: TLS"), "{e}");
        let bad = hook("https://localhost:1/".into(), GateWebhookType::ReadinessWebhook, Some("not pem".into()));
        assert!(call_of(bad).await.unwrap_err().to_string().contains("caBundle"));
    }

    #[test]
    fn a_service_is_reached_by_its_cluster_name() {
        let mut w = hook(String::new(), GateWebhookType::ReadinessWebhook, None);
        w.client_config.url = None;
        w.client_config.service = Some(crate::api::GateWebhookService {
            namespace: "game".into(),
            name: "backend".into(),
            port: None,
            path: Some("gates/ready".into()),
        });
        assert_eq!(url(&w).unwrap(), "https://backend.game.svc:443/gates/ready");
    }
}
