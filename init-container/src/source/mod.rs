//! The sources a layer can come from, and helpers they share.

pub(crate) mod git;
pub(crate) mod local;
pub(crate) mod p4;
pub(crate) mod s3;

use std::time::Duration;

use crate::Result;
use crate::error::{Ctx, Error};
use crate::retry;

/// An HTTP client for archives and git ref listing: rustls, no system proxy guessing.
pub(crate) fn http_client(ctx: &Ctx) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ctx.source(format!("cannot build HTTP client: {e}")))
}

/// Classifies a reqwest failure (never includes the request's credentials: reqwest does not
/// print headers, and URLs are scrubbed by `ctx`).
pub(crate) fn reqwest_error(ctx: &Ctx, e: &reqwest::Error) -> Error {
    let mut text = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    let text = strip_urls(&text);
    if e.is_timeout() || e.is_connect() || e.is_body() || e.is_request() || retry::text_is_transient(&text) {
        ctx.transient(text)
    } else {
        ctx.source(text)
    }
}

/// Replaces `scheme://user:pass@host/...` with the redacted form inside free text.
pub(crate) fn strip_urls(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            let trimmed = w.trim_matches(['(', ')', '"', '\'', ':', ',', ';']);
            if trimmed.contains("://") { w.replace(trimmed, &crate::plan::redact_url(trimmed)) } else { w.to_owned() }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds an S3 client for one bucket, with retries turned off (the `retry` module retries).
pub(crate) fn s3_store(
    ctx: &Ctx,
    endpoint: &str,
    region: Option<&str>,
    bucket: &str,
    path_style: Option<bool>,
    keys: Option<(&str, &str)>,
) -> Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3Builder;
    let path_style = path_style.unwrap_or(true);
    let endpoint = endpoint_for(endpoint, bucket, path_style);
    let retry =
        object_store::RetryConfig { max_retries: 0, retry_timeout: Duration::from_secs(1), ..Default::default() };
    let options = object_store::ClientOptions::new()
        .with_allow_http(true)
        .with_connect_timeout(Duration::from_secs(15))
        .with_timeout(Duration::from_secs(300));
    let mut b = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_region(region.filter(|r| !r.is_empty()).unwrap_or("us-east-1"))
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(!path_style)
        .with_retry(retry)
        .with_client_options(options);
    b = match keys {
        Some((ak, sk)) => b.with_access_key_id(ak).with_secret_access_key(sk),
        None => b.with_skip_signature(true),
    };
    b.build().map_err(|e| ctx.invalid(format!("s3 settings: {e}")))
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

/// S3 keys for a layer: from its Secret (`accesskey`/`secretkey`), else the environment
/// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`), else anonymous.
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
        None => match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
            (Ok(a), Ok(k)) => Some((zeroize::Zeroizing::new(a), zeroize::Zeroizing::new(k))),
            _ => None,
        },
    };
    if let Some((_, sk)) = &keys {
        ctx.add_secret(sk);
    }
    Ok(keys)
}

/// Classifies an object_store failure.
pub(crate) fn store_error(ctx: &Ctx, e: &object_store::Error, secret: Option<&str>, what: &str) -> Error {
    use object_store::Error as E;
    let text = strip_urls(&format!("{e}"));
    let auth_hint = match secret {
        Some(s) => format!("check Secret `{s}` keys `accesskey`/`secretkey` and the bucket's permissions"),
        None => "the bucket needs credentials: set secretRef to a Secret with `accesskey` and `secretkey`".to_owned(),
    };
    let lower = text.to_ascii_lowercase();
    match e {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ctx.auth(auth_hint),
        _ if lower.contains("signaturedoesnotmatch")
            || lower.contains("invalidaccesskeyid")
            || lower.contains("accessdenied") =>
        {
            ctx.auth(auth_hint)
        }
        E::NotFound { .. } => {
            ctx.not_found(format!("{what}: not found; check endpoint, bucket and prefix/key ({text})"))
        }
        _ if lower.contains("nosuchbucket") => {
            ctx.not_found(format!("{what}: bucket not found; check s3.bucket ({text})"))
        }
        E::InvalidPath { .. } => {
            ctx.hostile(format!("{what}: the bucket holds a key that is not a plain relative path ({text})"))
        }
        _ if retry::text_is_transient(&text) => ctx.transient(format!("{what}: {text}")),
        _ if lower.contains("status code: 4") => ctx.source(format!("{what}: {text}")),
        E::Generic { .. } => ctx.transient(format!("{what}: {text}")),
        _ => ctx.source(format!("{what}: {text}")),
    }
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
    fn urls_in_text_lose_credentials() {
        assert_eq!(strip_urls("error for url (http://u:p@h/x?sig=1): boom"), "error for url (http://h/x): boom");
    }
}
