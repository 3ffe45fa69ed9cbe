//! The webhook's TLS material: a self-signed CA and a serving certificate it signs, made with
//! rcgen, and when to make new ones. No Kubernetes client here.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// A CA, the serving certificate it signed, and what they were made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// PEM certificates the API server trusts (caBundle): the current CA first, then the
    /// previous one while a replica may still serve a certificate it signed.
    pub ca_pem: String,
    /// PEM serving certificate.
    pub cert_pem: String,
    /// PEM private key of the serving certificate.
    pub key_pem: String,
    /// Seconds since the epoch when the serving certificate expires.
    pub not_after: u64,
    /// Subject alternative names it was made for, sorted.
    pub sans: Vec<String>,
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Why a bundle must be replaced (`None`: keep it).
pub fn renewal_reason(bundle: &Bundle, sans: &[String], now: u64, renew_before: Duration) -> Option<String> {
    if bundle.sans != sans {
        return Some(format!("made for {:?}, needed for {sans:?}", bundle.sans));
    }
    if bundle.not_after <= now.saturating_add(renew_before.as_secs()) {
        return Some(format!("expires at {} (renewed {}s before)", bundle.not_after, renew_before.as_secs()));
    }
    None
}

fn first_pem_block(pem: &str) -> Option<&str> {
    const END: &str = "-----END CERTIFICATE-----";
    pem.find(END).map(|i| &pem[..i + END.len()])
}

/// Makes a new CA and serving certificate for `sans` (IP addresses become IP SANs), valid for
/// `validity`. The trust bundle keeps the first CA of `previous` so certificates it signed stay
/// trusted while replicas switch.
pub fn generate(sans: &[String], validity: Duration, previous: Option<&Bundle>) -> Result<Bundle, rcgen::Error> {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are behind ours.
    let not_before = now - time::Duration::minutes(5);
    let not_after = now + time::Duration::seconds(i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2));

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "gamezone webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // The CA outlives its serving certificate a little, so expiry is decided by the leaf.
    (ca.not_before, ca.not_after) = (not_before, not_after + time::Duration::days(1));
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, sans.first().map(String::as_str).unwrap_or("gamezone"));
    leaf.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(s.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    (leaf.not_before, leaf.not_after) = (not_before, not_after);
    let cert = leaf.signed_by(&key, &issuer)?;

    let mut ca_pem = ca_cert.pem();
    if let Some(old) = previous.and_then(|p| first_pem_block(&p.ca_pem)) {
        ca_pem.push_str(old);
        ca_pem.push('\n');
    }
    Ok(Bundle {
        ca_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: u64::try_from(not_after.unix_timestamp()).unwrap_or(0),
        sans: sans.to_vec(),
    })
}

/// The certificate the server presents; swapped in place when the Secret changes.
#[derive(Debug, Default)]
pub struct CertSlot(RwLock<Option<(String, Arc<CertifiedKey>)>>);

impl CertSlot {
    /// Loads `bundle`'s certificate unless it is already loaded; true when it changed.
    pub fn load(&self, bundle: &Bundle) -> Result<bool, String> {
        if self.0.read().expect("cert lock").as_ref().is_some_and(|(pem, _)| *pem == bundle.cert_pem) {
            return Ok(false);
        }
        let certs = CertificateDer::pem_slice_iter(bundle.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls.crt: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(bundle.key_pem.as_bytes()).map_err(|e| format!("tls.key: {e}"))?;
        let signer =
            tokio_rustls::rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("tls.key: {e}"))?;
        let certified = Arc::new(CertifiedKey::new(certs, signer));
        *self.0.write().expect("cert lock") = Some((bundle.cert_pem.clone(), certified));
        Ok(true)
    }

    /// Whether a certificate is loaded.
    pub fn is_loaded(&self) -> bool {
        self.0.read().expect("cert lock").is_some()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().expect("cert lock").as_ref().map(|(_, k)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_on_expiry_or_other_names() {
        let sans = vec!["127.0.0.1".to_string()];
        let b = generate(&sans, Duration::from_secs(3600), None).unwrap();
        let now = unix_now();
        assert!((now + 3590..=now + 3610).contains(&b.not_after), "{} vs {now}", b.not_after);
        assert_eq!(renewal_reason(&b, &sans, now, Duration::from_secs(60)), None);
        assert!(renewal_reason(&b, &sans, now, Duration::from_secs(7200)).unwrap().contains("expires"));
        assert!(renewal_reason(&b, &["gamezone.svc".to_string()], now, Duration::ZERO).unwrap().contains("needed for"));
    }

    #[test]
    fn a_new_bundle_keeps_trusting_the_previous_ca_and_loads() {
        let sans = vec!["gamezone-webhook.gamezone-system.svc".to_string(), "127.0.0.1".to_string()];
        let first = generate(&sans, Duration::from_secs(60), None).unwrap();
        assert_eq!(first.ca_pem.matches("BEGIN CERTIFICATE").count(), 1);
        let second = generate(&sans, Duration::from_secs(60), Some(&first)).unwrap();
        assert_eq!(second.ca_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(second.ca_pem.contains(first_pem_block(&first.ca_pem).unwrap()));
        let third = generate(&sans, Duration::from_secs(60), Some(&second)).unwrap();
        assert_eq!(third.ca_pem.matches("BEGIN CERTIFICATE").count(), 2, "only one previous CA is kept");
        let slot = CertSlot::default();
        assert!(slot.load(&first).unwrap());
        assert!(!slot.load(&first).unwrap(), "same certificate: no reload");
        assert!(slot.load(&second).unwrap());
    }
}
