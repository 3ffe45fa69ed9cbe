//! Keeps the webhook's certificate and registration current: the leader makes and rotates the
//! TLS Secret and server-side applies the MutatingWebhookConfiguration with its caBundle; every
//! replica loads the Secret's certificate into its server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::tls::{self, Bundle, CertSlot};
use super::{CONFIG_NAME, Config, Error};
use crate::api::{MANAGED_BY_LABEL, MANAGER};
use crate::ports::passthrough::{AUTOPILOT_PASSTHROUGH, PORT_LABEL};

const NOT_AFTER_ANNOTATION: &str = "gamezone.dev/not-after";
const SANS_ANNOTATION: &str = "gamezone.dev/sans";

/// Runs forever: syncs at once, then every `check_every`.
pub async fn run(client: Client, cfg: Arc<Config>, slot: Arc<CertSlot>, leader: Arc<AtomicBool>) {
    loop {
        if let Err(e) = sync(&client, &cfg, &slot, leader.load(Ordering::SeqCst)).await {
            tracing::warn!(error = %e, secret = %format!("{}/{}", cfg.secret_namespace, cfg.secret_name), "webhook certificate sync failed; retrying");
        }
        // Retry quickly until this replica can serve at all.
        let wait =
            if slot.is_loaded() { cfg.check_every } else { cfg.check_every.min(std::time::Duration::from_secs(2)) };
        tokio::time::sleep(wait).await;
    }
}

/// One pass: read the Secret; as leader, renew it when needed and apply the configuration; load
/// the certificate.
pub async fn sync(client: &Client, cfg: &Config, slot: &CertSlot, leader: bool) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.secret_namespace);
    let stored = secrets.get_opt(&cfg.secret_name).await?.and_then(|s| from_secret(&s));
    let sans = cfg.endpoint.sans();
    let bundle = match (leader, stored) {
        (false, None) => return Ok(()),
        (false, Some(b)) => b,
        (true, stored) => {
            let reason = match &stored {
                None => Some("no certificate yet".to_string()),
                Some(b) => tls::renewal_reason(b, &sans, tls::unix_now(), cfg.renew_before),
            };
            match reason {
                None => {
                    let b = stored.expect("kept only when present");
                    apply_config(client, cfg, &b).await?;
                    b
                }
                Some(why) => {
                    tracing::info!(reason = %why, "making a new webhook certificate");
                    let b = tls::generate(&sans, cfg.cert_validity, stored.as_ref())?;
                    // Trust first, then the Secret every replica serves from.
                    apply_config(client, cfg, &b).await?;
                    let pp = PatchParams::apply(MANAGER).force();
                    secrets.patch(&cfg.secret_name, &pp, &Patch::Apply(to_secret(cfg, &b))).await?;
                    b
                }
            }
        }
    };
    if slot.load(&bundle).map_err(Error::Tls)? {
        tracing::info!(not_after = bundle.not_after, sans = ?bundle.sans, "webhook certificate loaded");
    }
    Ok(())
}

fn from_secret(s: &Secret) -> Option<Bundle> {
    let data = s.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    let annotations = s.metadata.annotations.as_ref()?;
    Some(Bundle {
        ca_pem: text("ca.crt")?,
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
        not_after: annotations.get(NOT_AFTER_ANNOTATION)?.parse().ok()?,
        sans: annotations.get(SANS_ANNOTATION)?.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
    })
}

fn to_secret(cfg: &Config, b: &Bundle) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {
            "name": cfg.secret_name, "namespace": cfg.secret_namespace,
            "labels": {MANAGED_BY_LABEL: MANAGER},
            "annotations": {NOT_AFTER_ANNOTATION: b.not_after.to_string(), SANS_ANNOTATION: b.sans.join(",")},
        },
        "data": BTreeMap::from([("ca.crt", bytes(&b.ca_pem)), ("tls.crt", bytes(&b.cert_pem)), ("tls.key", bytes(&b.key_pem))]),
    }))
    .expect("a valid Secret")
}

/// The MutatingWebhookConfiguration, with `ca` as its caBundle.
pub fn webhook_configuration(cfg: &Config, ca: &str) -> MutatingWebhookConfiguration {
    let mut client_config = cfg.endpoint.client_config();
    client_config["caBundle"] = json!(ByteString(ca.as_bytes().to_vec()));
    let mut webhook = json!({
        "name": CONFIG_NAME,
        "clientConfig": client_config,
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
        "objectSelector": {"matchLabels": {PORT_LABEL: AUTOPILOT_PASSTHROUGH}},
        // Only labelled pods are sent, so failing closed stops only the pods that need us.
        "failurePolicy": "Fail",
        // Run again if a webhook after ours changes the pod (host ports assigned late).
        "reinvocationPolicy": "IfNeeded",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
        "matchPolicy": "Equivalent",
    });
    if let Some(ns) = &cfg.watch_namespace {
        webhook["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    }
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIG_NAME, "labels": {MANAGED_BY_LABEL: MANAGER}},
        "webhooks": [webhook],
    }))
    .expect("a valid MutatingWebhookConfiguration")
}

async fn apply_config(client: &Client, cfg: &Config, b: &Bundle) -> Result<(), Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let pp = PatchParams::apply(MANAGER).force();
    api.patch(CONFIG_NAME, &pp, &Patch::Apply(webhook_configuration(cfg, &b.ca_pem))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::{Endpoint, PATH};

    #[test]
    fn configuration_matches_labelled_pod_creates_after_platform_webhooks() {
        let mut cfg = Config::for_tests(Endpoint::Url(format!("https://127.0.0.1:9443{PATH}")));
        cfg.watch_namespace = Some("games".into());
        let c = serde_json::to_value(webhook_configuration(&cfg, "PEM")).unwrap();
        let w = &c["webhooks"][0];
        assert!(CONFIG_NAME.starts_with("zzz-"));
        assert_eq!(w["objectSelector"]["matchLabels"][PORT_LABEL], AUTOPILOT_PASSTHROUGH);
        assert_eq!(
            (&w["failurePolicy"], &w["reinvocationPolicy"], &w["sideEffects"]),
            (&json!("Fail"), &json!("IfNeeded"), &json!("None"))
        );
        assert_eq!(w["rules"][0]["operations"], json!(["CREATE"]));
        assert_eq!(w["clientConfig"]["url"], "https://127.0.0.1:9443/mutate-pods-passthrough");
        assert_eq!(w["clientConfig"]["caBundle"], "UEVN", "base64 of the PEM");
        assert_eq!(w["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "games");
    }

    #[test]
    fn the_secret_round_trips() {
        let cfg = Config::for_tests(Endpoint::Service { namespace: "gz".into(), name: "wh".into(), port: 443 });
        let b = tls::generate(&cfg.endpoint.sans(), std::time::Duration::from_secs(60), None).unwrap();
        let s = to_secret(&cfg, &b);
        assert_eq!(from_secret(&s), Some(b));
    }
}
