//! Leader election on a coordination.k8s.io Lease, so two replicas never both act.
//!
//! The holder renews the Lease every third of its duration. A replica takes it over only once it
//! has expired. Losing it (renewal failing for a whole duration) ends the process: a restart is
//! the simplest way to be sure no reconcile of the old leader is still in flight.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Which Lease to hold, and as whom.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
}

/// A held Lease; renewal runs in the background until the process ends.
pub struct Leadership {
    _renewer: tokio::task::JoinHandle<()>,
}

fn expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let (Some(renewed), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    renewed.0 + Duration::from_secs(secs.max(0) as u64) < now
}

/// Tries once to take or renew the Lease; true when this replica holds it afterwards.
async fn try_hold(api: &Api<Lease>, cfg: &LeaseConfig) -> kube::Result<bool> {
    let now = Timestamp::now();
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs() as i32),
        renew_time: Some(MicroTime(now)),
        acquire_time: acquired.or(Some(MicroTime(now))),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(cfg.name.clone()), ..Default::default() },
                spec: Some(spec(0, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
            let ours = current.as_deref() == Some(cfg.identity.as_str());
            if !ours && !expired(&lease, now) {
                return Ok(false);
            }
            let old = lease.spec.clone().unwrap_or_default();
            let transitions = old.lease_transitions.unwrap_or(0) + i32::from(!ours);
            lease.spec = Some(spec(transitions, if ours { old.acquire_time } else { None }));
            // replace carries the resourceVersion: a racing replica gets 409 and backs off.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this replica holds the Lease, then keeps renewing it in the background.
pub async fn acquire(client: Client, cfg: LeaseConfig) -> anyhow::Result<Leadership> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let retry = cfg.duration / 3;
    let mut waiting_logged = false;
    loop {
        match try_hold(&api, &cfg).await {
            Ok(true) => break,
            Ok(false) if !waiting_logged => {
                tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, "another replica leads; waiting");
                waiting_logged = true;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, lease = %cfg.name, "could not read or take the Lease; retrying")
            }
        }
        tokio::time::sleep(retry).await;
    }
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
    let renewer = tokio::spawn(async move {
        let mut last_ok = std::time::Instant::now();
        loop {
            tokio::time::sleep(retry).await;
            match try_hold(&api, &cfg).await {
                Ok(true) => last_ok = std::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %cfg.name, "lost the Lease to another replica; exiting");
                    std::process::exit(1);
                }
                Err(e) if last_ok.elapsed() >= cfg.duration => {
                    tracing::error!(error = %e, lease = %cfg.name, "could not renew the Lease in time; exiting");
                    std::process::exit(1);
                }
                Err(e) => tracing::warn!(error = %e, "Lease renewal failed; retrying"),
            }
        }
    });
    Ok(Leadership { _renewer: renewer })
}
