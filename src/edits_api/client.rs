//! The edits API reached through the API server's service proxy
//! (`/api/v1/namespaces/NS/services/<zone>-edits-api:8080/proxy/...`) with the caller's own
//! credentials: no exec, no port opened to anyone else. The share's password, read from its
//! Secret, goes in the token header, so only who can read that Secret reaches the edits.

use futures::AsyncReadExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::ShareReport;
use crate::api::GameZone;
use crate::zone::{API_PORT, TOKEN_HEADER, edits_api_name};
use crate::{Error, Result};

/// A zone's edits API.
pub struct EditsApi {
    client: Client,
    base: String,
    token: String,
}

impl EditsApi {
    /// The edits API of `zone`, with the password from its `spec.edits.secretRef`.
    pub async fn of(client: Client, zone: &GameZone) -> Result<Self> {
        let ns = zone.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = zone.metadata.name.clone().unwrap_or_default();
        let edits = zone.spec.edits.as_ref().ok_or_else(|| {
            Error::invalid("spec.edits", format!("zone {ns}/{name} has no live edits; set spec.edits to turn them on"))
        })?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret = secrets.get_opt(&edits.secret_ref.name).await?;
        let token = secret
            .and_then(|s| s.data)
            .and_then(|d| d.get("password").map(|v| String::from_utf8_lossy(&v.0).trim_end_matches('\n').to_string()))
            .ok_or_else(|| {
                Error::Spec(gamezone_core::Error::MissingSecret {
                    field: "spec.edits.secretRef".into(),
                    secret: edits.secret_ref.name.clone(),
                    problem: "has no key \"password\"".into(),
                    namespace: ns.clone(),
                })
            })?;
        let base = format!("/api/v1/namespaces/{ns}/services/{}:{API_PORT}/proxy", edits_api_name(&name));
        Ok(EditsApi { client, base, token })
    }

    fn request(&self, method: &str, path: &str) -> Result<http::Request<Vec<u8>>> {
        http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(TOKEN_HEADER, &self.token)
            .body(Vec::new())
            .map_err(|e| Error::invalid("edits API request", e.to_string()))
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<ShareReport> {
        let text = self.client.request_text(self.request("GET", "/status")?).await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// `POST /reset`: removes every edit; returns how many top-level entries went.
    pub async fn reset(&self) -> Result<u64> {
        let text = self.client.request_text(self.request("POST", "/reset")?).await?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        Ok(v["removed"].as_u64().unwrap_or_default())
    }

    /// `GET /tar`: the edits as a tar; `progress` hears the bytes received so far.
    pub async fn tar(&self, mut progress: impl FnMut(u64)) -> Result<Vec<u8>> {
        let mut body = self.client.request_stream(self.request("GET", "/tar")?).await?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = body.read(&mut buf).await.map_err(|e| Error::Kube(kube::Error::ReadEvents(e)))?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            progress(out.len() as u64);
        }
        Ok(out)
    }
}
