//! The HTTPS server for admission requests: rustls with a certificate swapped in place, hyper
//! serving an axum router.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::routing::post;
use base64::Engine as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use super::tls::CertSlot;
use super::{Error, PATH};
use crate::ports::passthrough::passthrough_patch;

/// Binds `addr` and serves admission requests on it with the certificate in `slot`, until the
/// task is dropped. Binding errors come back at once; connection errors are only logged.
pub async fn serve(addr: SocketAddr, slot: Arc<CertSlot>) -> Result<tokio::task::JoinHandle<()>, Error> {
    let app = axum::Router::new().route(PATH, post(mutate));
    tracing::info!(%addr, path = PATH, "webhook serving");
    serve_router(addr, slot, app).await
}

/// Serves `app` over HTTPS on `addr` with the certificate in `slot` (also used by test fixtures).
pub async fn serve_router(
    addr: SocketAddr,
    slot: Arc<CertSlot>,
    app: axum::Router,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    Ok(tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    continue;
                }
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => return tracing::debug!(%peer, error = %e, "webhook TLS handshake failed"),
                };
                let service = TowerToHyperService::new(app);
                if let Err(e) =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await
                {
                    tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
                }
            });
        }
    }))
}

/// `POST /mutate-pods-passthrough`: an AdmissionReview in, one with a JSONPatch (or none) out.
async fn mutate(Json(review): Json<Value>) -> Json<Value> {
    Json(review_response(&review))
}

/// The AdmissionReview answering `review`. Pods that aren't ours are admitted unchanged; a
/// labelled pod whose passthrough list can't be followed is refused, naming the problem.
pub fn review_response(review: &Value) -> Value {
    let request = &review["request"];
    let uid = request["uid"].clone();
    let name = format!(
        "{}/{}",
        request["namespace"].as_str().unwrap_or_default(),
        request["object"]["metadata"]["name"].as_str().or(request["name"].as_str()).unwrap_or_default()
    );
    let outcome = serde_json::from_value::<Pod>(request["object"].clone())
        .map_err(|e| format!("not a Pod: {e}"))
        .and_then(|pod| passthrough_patch(&pod));
    let response = match outcome {
        Ok(ops) if ops.is_empty() => json!({"uid": uid, "allowed": true}),
        Ok(ops) => {
            tracing::info!(pod = %name, changes = ops.len(), "copying platform-assigned host ports into container ports");
            let patch = base64::engine::general_purpose::STANDARD.encode(Value::Array(ops).to_string());
            json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch})
        }
        Err(why) => {
            tracing::warn!(pod = %name, error = %why, "refusing a passthrough pod");
            json!({"uid": uid, "allowed": false, "status": {"code": 400, "message": format!("gamezone passthrough webhook: {why}")}})
        }
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::passthrough::{AUTOPILOT_PASSTHROUGH, PASSTHROUGH_PORTS_ANNOTATION, PORT_LABEL};

    fn review(object: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "request": {"uid": "u-1", "namespace": "ns", "operation": "CREATE", "object": object}})
    }

    #[test]
    fn answers_with_a_base64_jsonpatch_for_labelled_pods_only() {
        let pod = json!({"metadata": {"name": "p",
            "labels": {PORT_LABEL: AUTOPILOT_PASSTHROUGH},
            "annotations": {PASSTHROUGH_PORTS_ANNOTATION: r#"[{"name":"game","container":"server","index":0}]"#}},
            "spec": {"containers": [{"name": "server", "ports": [{"containerPort": 1, "hostPort": 7005}]}]}});
        let r = review_response(&review(pod.clone()));
        assert_eq!(r["response"]["uid"], "u-1");
        assert_eq!(r["response"]["allowed"], true);
        assert_eq!(r["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD.decode(r["response"]["patch"].as_str().unwrap()).unwrap();
        let patch: Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(
            patch,
            json!([{"op": "replace", "path": "/spec/containers/0/ports/0/containerPort", "value": 7005}])
        );

        let mut unlabelled = pod;
        unlabelled["metadata"]["labels"] = json!({});
        let r = review_response(&review(unlabelled));
        assert_eq!(r["response"], json!({"uid": "u-1", "allowed": true}));
    }
}
