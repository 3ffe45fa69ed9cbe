//! Webhooks of the game's own backend that set a server's gates (seed 002's
//! WebhookConfiguration), and the review they exchange, field for field.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Constraint;

/// Webhooks the SDK sidecar polls for the gates of the servers that name this configuration
/// (`spec.services[].webhookConfig`).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gamezone.dev",
    version = "v1alpha1",
    kind = "WebhookConfiguration",
    plural = "webhookconfigurations",
    shortname = "gzwh",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookConfigurationSpec {
    /// The webhooks.
    #[schemars(length(min = 1, max = 32))]
    pub webhooks: Vec<GateWebhook>,
}

/// One webhook: which gate it sets (its `name`) and how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.clientConfig.url) != has(self.clientConfig.service)",
     "message": "clientConfig needs exactly one of url or service"}
]))]
pub struct GateWebhook {
    /// For Readiness and Deletable webhooks, the gate (condition type) the answer sets.
    pub name: String,
    /// What the webhook decides.
    #[serde(rename = "type")]
    pub type_: GateWebhookType,
    /// Where it is.
    pub client_config: GateWebhookClient,
    /// Seconds to wait for an answer; 15 when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: Option<i32>,
    /// Seconds between polls; 5 when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// `Always` polls on; `Once` stops after the first allowed answer. `Always` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_policy: Option<RequestPolicy>,
}

/// What a webhook decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GateWebhookType {
    /// Whether the server may count as Ready (sets the readiness gate it names).
    #[default]
    ReadinessWebhook,
    /// Whether a drained server may be deleted (sets the deletable gate it names).
    DeletableWebhook,
    /// Told when the server's constraints change (NotInService), before deletable webhooks poll.
    ConstraintWebhook,
}

/// When a webhook is asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RequestPolicy {
    /// Until the first allowed answer.
    Once,
    /// Every period.
    #[default]
    Always,
}

/// How to reach a webhook: a URL, or a Service in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateWebhookClient {
    /// `https://…` or `http://…` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Service in front of the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<GateWebhookService>,
    /// PEM CA bundle that signs the webhook's certificate (HTTPS); the system's roots when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// A Service in front of a webhook.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateWebhookService {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// Port; 443 when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// URL path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What is sent to a webhook, and what comes back (seed 002's WebhookReview).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookReview {
    /// Filled by the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<WebhookRequest>,
    /// Filled by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<WebhookResponse>,
}

/// The question: which server, and its constraints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookRequest {
    /// Traces request and response.
    pub uid: String,
    /// The GameServer's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its constraints (NotInService while drained).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

/// The answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookResponse {
    /// The request's uid.
    pub uid: String,
    /// Whether the gate is open.
    pub allowed: bool,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
