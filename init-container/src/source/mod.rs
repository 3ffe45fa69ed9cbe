//! The sources a layer can come from, and helpers they share.

pub(crate) mod git;
pub(crate) mod local;
pub(crate) mod p4;
pub(crate) mod s3;

use std::sync::Arc;
use std::time::Duration;

use crate::Result;
use crate::egress::{Egress, Refused};
use crate::error::{Ctx, Error};
use crate::retry;

/// An HTTP client for archives and git: rustls, names resolved through the egress policy,
/// redirects followed only on the same host.
pub(crate) fn http_client(ctx: &Ctx, egress: &Egress) -> Result<reqwest::Client> {
    client_builder(egress)
        .read_timeout(Duration::from_secs(60))
        .redirect(same_host_redirects(egress.clone()))
        .build()
        .map_err(|_| ctx.source("cannot build the HTTP client"))
}

fn client_builder(egress: &Egress) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .dns_resolver(Arc::new(PolicyResolver(egress.clone())))
}

/// Resolves names with the system resolver and keeps only the addresses the policy allows.
/// (IP literals never reach a resolver: `Egress::check_url` checks them before the request.)
struct PolicyResolver(Egress);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs =
                egress.lookup(&host, 0).await.map_err(|r| Box::new(r) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Follows a redirect only to the same scheme, host and port, or from http to https on the same
/// host, and only when the policy allows the new URL; otherwise the 3xx answer is returned.
fn same_host_redirects(egress: Egress) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |a| {
        if a.previous().len() > 10 {
            return a.stop();
        }
        let Some(prev) = a.previous().last() else { return a.stop() };
        let next = a.url();
        let same_host = prev.host_str().is_some() && prev.host_str() == next.host_str();
        let same_origin =
            prev.scheme() == next.scheme() && prev.port_or_known_default() == next.port_or_known_default();
        let upgrade = prev.scheme() == "http" && next.scheme() == "https";
        if same_host && (same_origin || upgrade) && egress.check_url("redirect", next.as_str()).is_ok() {
            a.follow()
        } else {
            a.stop()
        }
    })
}

/// What a non-success HTTP status means, as a fixed phrase (never the answer's body).
pub(crate) fn status_phrase(status: u16, field: &str) -> String {
    match status {
        300..=399 => format!(
            "HTTP {status}: the server redirects elsewhere, which is not followed (only the same host is); put the final URL in {field}"
        ),
        _ => format!("HTTP {status}"),
    }
}

/// The egress refusal a library error carries, if any.
fn refused<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e Refused> {
    e.downcast_ref::<Refused>()
}

/// The layer error for an egress refusal `r`: the policy's is the spec's to fix (named by
/// `field`); a name that did not resolve may pass (named by `what`).
fn refusal(ctx: &Ctx, r: &Refused, field: &str, what: &str) -> Error {
    if r.policy { ctx.invalid(format!("{field}: {r}")) } else { ctx.transient(format!("{what}: {r}")) }
}

/// Classifies a reqwest failure into a fixed phrase naming `field`: nothing the server sent,
/// and no library text (which can carry addresses, timings or answers), reaches the message.
pub(crate) fn reqwest_error(ctx: &Ctx, field: &str, e: &reqwest::Error) -> Error {
    let mut tls = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = cur {
        if let Some(r) = refused(s) {
            return refusal(ctx, r, field, field);
        }
        // Read only to classify; never copied into the message.
        let t = s.to_string().to_ascii_lowercase();
        tls |= t.contains("certificate") || t.contains("tls") || t.contains("handshake");
        cur = s.source();
    }
    if e.is_timeout() {
        ctx.transient(format!("{field}: no answer in time (timed out)"))
    } else if e.is_connect() && tls {
        ctx.source(format!("{field}: TLS handshake failed; check the server's certificate"))
    } else if e.is_connect() {
        ctx.transient(format!("{field}: cannot connect to the server"))
    } else if e.is_body() || e.is_decode() {
        ctx.transient(format!("{field}: the connection closed while the answer was read"))
    } else if e.is_request() {
        ctx.transient(format!("{field}: the connection closed before the server answered"))
    } else if e.is_redirect() {
        ctx.source(format!("{field}: too many redirects"))
    } else if e.is_builder() {
        ctx.invalid(format!("{field}: not a URL the HTTP client accepts; check {field}"))
    } else {
        ctx.source(format!("{field}: the request failed"))
    }
}

/// Builds an S3 client for one bucket, with retries turned off (the `retry` module retries).
/// `endpoint` is the spec field that names it and its URL.
pub(crate) fn s3_store(
    ctx: &Ctx,
    (field, endpoint): (&str, &str),
    region: Option<&str>,
    bucket: &str,
    path_style: Option<bool>,
    keys: Option<(&str, &str)>,
    egress: &Egress,
) -> Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3Builder;
    egress.check_url(field, endpoint).map_err(|m| ctx.invalid(m))?;
    let path_style = path_style.unwrap_or(true);
    let endpoint = endpoint_for(endpoint, bucket, path_style);
    let retry =
        object_store::RetryConfig { max_retries: 0, retry_timeout: Duration::from_secs(1), ..Default::default() };
    let options = object_store::ClientOptions::new().with_allow_http(true);
    let mut b = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_region(region.filter(|r| !r.is_empty()).unwrap_or("us-east-1"))
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(!path_style)
        .with_retry(retry)
        .with_client_options(options)
        .with_http_connector(PolicyConnector(egress.clone()));
    b = match keys {
        Some((ak, sk)) => b.with_access_key_id(ak).with_secret_access_key(sk),
        None => b.with_skip_signature(true),
    };
    b.build().map_err(|_| {
        ctx.invalid(format!("{field}: the S3 settings are not valid; check the endpoint, region and bucket"))
    })
}

/// Gives object_store a reqwest client that resolves names through the egress policy and
/// follows no redirect, so a DNS name is checked when it is connected to (no rebinding window).
#[derive(Debug)]
struct PolicyConnector(Egress);

impl object_store::client::HttpConnector for PolicyConnector {
    fn connect(&self, _: &object_store::ClientOptions) -> object_store::Result<object_store::client::HttpClient> {
        let client = client_builder(&self.0)
            .timeout(Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| object_store::Error::Generic { store: "S3", source: Box::new(e) })?;
        Ok(object_store::client::HttpClient::new(client))
    }
}

/// object_store expects the bucket in the endpoint host for virtual-hosted requests.
pub(crate) fn endpoint_for(endpoint: &str, bucket: &str, path_style: bool) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if path_style {
        return endpoint.to_owned();
    }
    match endpoint.split_once("://") {
        Some((scheme, host)) if !host.starts_with(&format!("{bucket}.")) => format!("{scheme}://{bucket}.{host}"),
        _ => endpoint.to_owned(),
    }
}

/// S3 keys for a layer: from its Secret (`accesskey`/`secretkey`), else none (anonymous,
/// unsigned requests). The process's own `AWS_*` variables are never used: the endpoint is the
/// tenant's choice, and would receive requests signed with the operator's keys.
pub(crate) fn s3_keys(
    ctx: &mut Ctx,
    secret: Option<&str>,
    creds: &dyn crate::creds::Credentials,
) -> Result<Option<(zeroize::Zeroizing<String>, zeroize::Zeroizing<String>)>> {
    let keys = match secret {
        Some(s) => {
            let ak = crate::creds::text_key(creds, ctx, s, "accesskey")?;
            let sk = crate::creds::text_key(creds, ctx, s, "secretkey")?;
            match (ak, sk) {
                (Some(a), Some(k)) => Some((a, k)),
                _ => {
                    return Err(ctx.credentials(format!("Secret `{s}` needs keys `accesskey` and `secretkey`")));
                }
            }
        }
        None => None,
    };
    if let Some((_, sk)) = &keys {
        ctx.add_secret(sk);
    }
    Ok(keys)
}

/// Classifies an object_store failure into a fixed phrase with at most the HTTP status: the
/// library's text carries the answer's body, the request's timing and the URL, none of which
/// may reach a message.
pub(crate) fn store_error(ctx: &Ctx, e: &object_store::Error, secret: Option<&str>, what: &str) -> Error {
    use object_store::Error as E;
    use object_store::client::{HttpError, HttpErrorKind as K};
    let auth_hint = match secret {
        Some(s) => format!("check Secret `{s}` keys `accesskey`/`secretkey` and the bucket's permissions"),
        None => "the bucket needs credentials: set secretRef to a Secret with `accesskey` and `secretkey`".to_owned(),
    };
    // Read only to classify; never copied into the message.
    let text = e.to_string().to_ascii_lowercase();
    let status = status_in(&text);
    let mut kind = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = cur {
        if let Some(r) = refused(s) {
            return refusal(ctx, r, "s3.endpoint", what);
        }
        if let Some(h) = s.downcast_ref::<HttpError>() {
            kind = Some(h.kind());
        }
        cur = s.source();
    }
    let code = |phrase: &str| match status {
        Some(s) => format!("{what}: {phrase} (HTTP {s})"),
        None => format!("{what}: {phrase}"),
    };
    match e {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => return ctx.auth(auth_hint),
        _ if text.contains("signaturedoesnotmatch")
            || text.contains("invalidaccesskeyid")
            || text.contains("accessdenied") =>
        {
            return ctx.auth(auth_hint);
        }
        E::NotFound { .. } => return ctx.not_found(code("not found; check endpoint, bucket and prefix/key")),
        _ if text.contains("nosuchbucket") => return ctx.not_found(code("bucket not found; check s3.bucket")),
        E::InvalidPath { .. } => {
            return ctx.hostile(format!("{what}: the bucket holds a key that is not a plain relative path"));
        }
        _ => {}
    }
    match (kind, status) {
        (Some(K::Connect), _) => ctx.transient(format!("{what}: cannot connect to the server")),
        (Some(K::Timeout), _) => ctx.transient(format!("{what}: no answer in time (timed out)")),
        (Some(K::Request | K::Interrupted), _) => ctx.transient(format!("{what}: the connection closed")),
        (_, Some(s)) if retry::status_is_transient(s) => ctx.transient(code("the server failed")),
        (_, Some(_)) => ctx.source(code("the server refused the request")),
        (Some(K::Decode), None) => ctx.source(format!("{what}: the answer is not what an S3 server sends")),
        _ => match e {
            E::Generic { .. } => ctx.transient(format!("{what}: the S3 request failed")),
            _ => ctx.source(format!("{what}: the S3 request failed")),
        },
    }
}

/// The HTTP status in an object_store error text (`... status code: 403 ...`), if any.
fn status_in(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok().filter(|s| (100..600).contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosted_endpoints_carry_the_bucket() {
        assert_eq!(
            endpoint_for("https://cos.ap-beijing.myqcloud.com/", "b-123", false),
            "https://b-123.cos.ap-beijing.myqcloud.com"
        );
        assert_eq!(endpoint_for("https://b.s3.amazonaws.com", "b", false), "https://b.s3.amazonaws.com");
        assert_eq!(endpoint_for("http://minio:9000/", "b", true), "http://minio:9000");
    }

    #[test]
    fn status_codes_are_the_only_thing_read_from_error_text() {
        assert_eq!(status_in("server returned non-2xx status code: 403 forbidden: <secret-body>"), Some(403));
        assert_eq!(status_in("status code: abc"), None);
        assert_eq!(status_in("no status"), None);
    }

    #[test]
    fn an_s3_layer_without_a_secret_is_anonymous_whatever_the_environment() {
        // The environment is process-wide: a child process runs the check with AWS_* set.
        if std::env::var_os("GAMEZONE_TEST_AWS_CHILD").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "source::tests::an_s3_layer_without_a_secret_is_anonymous_whatever_the_environment"])
                .env("GAMEZONE_TEST_AWS_CHILD", "1")
                .env("AWS_ACCESS_KEY_ID", "AKIAOPERATOR")
                .env("AWS_SECRET_ACCESS_KEY", "operator-secret")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
            return;
        }
        let mut ctx = Ctx::new(0, "s3");
        let keys = s3_keys(&mut ctx, None, &crate::creds::NoCredentials).unwrap();
        assert!(keys.is_none(), "no secretRef: anonymous even with AWS_ACCESS_KEY_ID set");
    }
}
