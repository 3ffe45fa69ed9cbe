//! Unit tests of the zone decisions, without a server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gamezone_api::fixture::zone as fixture;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::json;

use super::*;
use crate::zone::BuildConfig;

fn zone() -> GameZone {
    fixture("z1")
        .namespace("ns")
        .uid("u1")
        .generation(3)
        .servers(7)
        .spec("mysql", json!({"host": "m", "user": "u", "database": "d", "passwordSecretRef": {"name": "db", "key": "password"}}))
        .spec("artifacts", json!([{"path": "/app/a", "git": {"url": "https://g/x.git", "branch": "main", "secretRef": {"name": "git"}}}]))
        .build()
}

fn wanted() -> Vec<GameServer> {
    crate::zone::game_servers(&zone(), &["c0ffee".into()], None, &BuildConfig::default()).unwrap()
}

fn by_name(servers: &[GameServer]) -> BTreeMap<String, &GameServer> {
    servers.iter().map(|g| (g.name_any(), g)).collect()
}

fn ready(mut gs: GameServer) -> GameServer {
    let hash = crate::zone::server_template_hash(&gs.spec);
    gs.status =
        Some(GameServerStatus { state: Some(ServerState::Ready), template_hash: Some(hash), ..Default::default() });
    gs
}

fn condition<'a>(status: &'a GameZoneStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

fn secret(name: &str, keys: &[&str]) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.data = Some(keys.iter().map(|k| (k.to_string(), k8s_openapi::ByteString(b"x".to_vec()))).collect());
    s
}

#[test]
fn every_secret_a_zone_names_is_checked_with_the_field_that_names_it() {
    let uses = secrets_used(&zone(), &BuildConfig::default());
    let fields: Vec<_> = uses.iter().map(|u| (u.field.as_str(), u.name.as_str(), u.key.as_deref())).collect();
    assert_eq!(
        fields,
        [("spec.mysql.passwordSecretRef", "db", Some("password")), ("spec.artifacts[0].git.secretRef", "git", None),]
    );
    let cfg = BuildConfig::default();
    assert!(
        names_secret(&zone(), &cfg, "git")
            && names_secret(&zone(), &cfg, "db")
            && !names_secret(&zone(), &cfg, "other")
    );

    let (db, git) = (secret("db", &["password"]), secret("git", &["username"]));
    assert!(check_secrets("ns", &uses, |n| [&db, &git].into_iter().find(|s| s.name_any() == n)).is_ok());

    let err = check_secrets("ns", &uses, |n| [&git].into_iter().find(|s| s.name_any() == n)).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"spec.mysql.passwordSecretRef: Secret "db" does not exist; create it in namespace "ns""#
    );
    let wrong_key = secret("db", &["pwd"]);
    let err = check_secrets("ns", &uses, |n| [&wrong_key, &git].into_iter().find(|s| s.name_any() == n)).unwrap_err();
    assert!(err.to_string().contains(r#"Secret "db" has no key "password""#), "{err}");
    assert!(matches!(err, Error::MissingSecret { .. }), "the operator shows it as SecretNotFound");
}

#[test]
fn pins_are_resolved_when_the_artifacts_change_or_the_interval_passed() {
    let now = Timestamp::now();
    let mut status = GameZoneStatus::default();
    assert!(resolve_due(&status, "h1", None, now), "never resolved");
    status.artifacts_hash = Some("h1".into());
    status.artifacts_resolved_at = Some(Time(now - Duration::from_secs(60)));
    assert!(!resolve_due(&status, "h1", Some(Duration::from_secs(300)), now));
    assert!(resolve_due(&status, "h1", Some(Duration::from_secs(30)), now), "interval passed");
    assert!(!resolve_due(&status, "h1", None, now), "no interval: only spec changes");
    assert!(resolve_due(&status, "h2", None, now), "the artifacts changed");
}

#[test]
fn a_migration_holds_servers_until_it_succeeds_and_a_failure_degrades_the_zone() {
    let job = |type_: &str, reason: &str| Job {
        status: Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: type_.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some("Job has reached the specified backoff limit".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(job_outcome(&Job::default()), JobOutcome::Running(None));
    assert_eq!(job_outcome(&job("Complete", "")), JobOutcome::Succeeded);
    let failed = job_outcome(&job("Failed", "BackoffLimitExceeded"));
    assert_eq!(failed, JobOutcome::Failed("BackoffLimitExceeded: Job has reached the specified backoff limit".into()));

    let mut status = GameZoneStatus { observed_generation: Some(3), ..Default::default() };
    assert!(!report_job(VersionJob::Migration, &mut status, "z1-migrate-h2", "h2", &JobOutcome::Running(None)));
    assert_eq!(status.phase, Some(ZonePhase::Migrating));
    assert_eq!(status.migration.as_ref().unwrap().state, JobState::Running);

    assert!(!report_job(VersionJob::Migration, &mut status, "z1-migrate-h2", "h2", &failed));
    assert_eq!(status.phase, Some(ZonePhase::Degraded));
    let (ok, reason, message) = condition(&status, types::READY);
    assert_eq!((ok, reason), ("False", "MigrationFailed"));
    assert!(message.contains("BackoffLimitExceeded") && message.contains("left on the previous version"), "{message}");
    assert_eq!(status.migration.as_ref().unwrap().succeeded_hash, None);

    assert!(report_job(VersionJob::Migration, &mut status, "z1-migrate-h2", "h2", &JobOutcome::Succeeded));
    let m = status.migration.as_ref().unwrap();
    assert_eq!((m.state, m.succeeded_hash.as_deref()), (JobState::Succeeded, Some("h2")));
    assert_eq!(condition(&status, types::MIGRATED).0, "True");
}

#[test]
fn a_pack_reports_in_its_own_status_and_condition_and_a_failed_one_holds_the_servers() {
    let mut status = GameZoneStatus { observed_generation: Some(3), ..Default::default() };
    assert!(!report_job(VersionJob::Pack, &mut status, "z1-pack-h1", "h1", &JobOutcome::Running(None)));
    assert_eq!(status.phase, Some(ZonePhase::Packing));
    assert_eq!(condition(&status, types::ARTIFACTS_PACKED).1, "Packing");
    // Its pod cannot be scheduled: the zone says so, in the scheduler's words.
    let stuck = JobOutcome::Running(Some("not scheduled: 0/1 nodes are available".into()));
    assert!(!report_job(VersionJob::Pack, &mut status, "z1-pack-h1", "h1", &stuck));
    let (_, reason, message) = condition(&status, types::READY);
    assert_eq!(reason, "Packing");
    assert!(
        message.ends_with("servers wait for it; its pod is stuck: not scheduled: 0/1 nodes are available"),
        "{message}"
    );
    assert!(status.migration.is_none(), "the migration's status is not the pack's");
    let failed = JobOutcome::Failed("BackoffLimitExceeded: x".into());
    assert!(!report_job(VersionJob::Pack, &mut status, "z1-pack-h1", "h1", &failed));
    let (ok, reason, message) = condition(&status, types::READY);
    assert_eq!((ok, reason, status.phase), ("False", "PackFailed", Some(ZonePhase::Degraded)));
    assert!(message.contains("z1-pack-h1") && message.contains("artifact registry"), "{message}");
    assert!(report_job(VersionJob::Pack, &mut status, "z1-pack-h1", "h1", &JobOutcome::Succeeded));
    let p = status.pack.as_ref().unwrap();
    assert_eq!((p.state, p.succeeded_hash.as_deref()), (JobState::Succeeded, Some("h1")));
    assert_eq!(condition(&status, types::ARTIFACTS_PACKED).0, "True");
}

#[test]
fn what_a_pack_reported_is_recorded_per_layer_and_a_short_or_bad_report_records_nothing() {
    let pod = |exit: i32, message: &str| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({"status": {"containerStatuses": [{
            "name": crate::zone::PACK_CONTAINER, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit, "message": message}}}]}}))
        .unwrap()
    };
    let layer = |i: i32| ArtifactStatus { layer: i, source: "git x".into(), revision: "c0ffee".into(), packed: None };
    let unpacked = || GameZoneStatus { artifacts: vec![layer(0), layer(1)], ..Default::default() };
    let tree = r#""tree":{"image":"reg:5000/l@sha256:cc","treeDigest":"sha256:dd"}"#;
    let report =
        format!(r#"{{"layers":[{{"digest":"sha256:aa","size":10}},{{"digest":"sha256:bb","size":20}}],{tree}}}"#);
    let mut status = unpacked();
    record_packed(&mut status, &[pod(1, "boom"), pod(0, &report)]);
    assert_eq!(status.artifacts[1].packed, Some(PackedLayer { digest: "sha256:bb".into(), size: 20 }));
    let recorded = status.tree_image.unwrap();
    assert_eq!((recorded.image.as_str(), recorded.tree_digest.as_str()), ("reg:5000/l@sha256:cc", "sha256:dd"));
    for bad in [
        format!(r#"{{"layers":[{{"digest":"sha256:aa","size":10}}],{tree}}}"#),
        "not json".into(),
        r#"[{"digest":"sha256:aa","size":10},{"digest":"sha256:bb","size":20}]"#.into(),
        format!(r#"{{"layers":[{{"digest":"md5:x","size":1}},{{"digest":"sha256:b","size":2}}],{tree}}}"#),
        report.replace("@sha256:cc", ":latest"),
    ] {
        let mut status = unpacked();
        record_packed(&mut status, &[pod(0, &bad)]);
        assert!(status.artifacts.iter().all(|a| a.packed.is_none()) && status.tree_image.is_none(), "{bad}");
    }
}

fn names(v: &[(GameServer, String)]) -> Vec<String> {
    v.iter().map(|(g, _)| g.name_any()).collect()
}

fn with_gates(mut gs: GameServer, gates: &[&str]) -> GameServer {
    gs.spec.lifecycle.deletable_gates = gates.iter().map(|g| g.to_string()).collect();
    gs
}

fn gate(mut gs: GameServer, type_: &str, ok: bool) -> GameServer {
    let status = gs.status.get_or_insert_with(Default::default);
    conditions::set(&mut status.conditions, type_, ok, "Game", "set by the game", None);
    gs
}

fn plan(want: &[GameServer], live: &[GameServer], now: Timestamp) -> ServerPlan {
    plan_servers(want, &by_name(live), &BTreeMap::new(), &BTreeMap::new(), now, |_, _| false)
}

#[test]
fn only_missing_or_drifted_servers_are_applied_and_only_unwanted_ones_deleted() {
    let want = wanted();
    let mut live: Vec<GameServer> = want[..4].to_vec();
    live[1].metadata.labels.get_or_insert_with(Default::default).insert("drift".into(), "1".into());
    live[2].metadata.deletion_timestamp = Some(Time(Timestamp::now())); // terminating: left alone
    let mut extra = want[0].clone();
    extra.metadata.name = Some("z1-game-99".into());
    live.push(extra);
    let index = by_name(&live);
    let p = plan_servers(&want, &index, &BTreeMap::new(), &BTreeMap::new(), Timestamp::now(), |_, _| false);
    assert_eq!(names(&p.apply), ["z1-game-2", "z1-game-5", "z1-game-6", "z1-game-7"]);
    // Serving no one and with no gates: it goes at once, no drain.
    assert_eq!(p.delete, ["z1-game-99"]);
    assert!(p.drains.is_empty() && p.draining.is_empty());
    // What this process applied moments ago, the lagging watch not showing it yet, is not re-sent.
    let p = plan_servers(&want, &index, &BTreeMap::new(), &BTreeMap::new(), Timestamp::now(), |g, _| {
        g.name_any() == "z1-game-5"
    });
    assert_eq!(names(&p.apply), ["z1-game-2", "z1-game-6", "z1-game-7"]);

    let wanted_names = want.iter().map(|g| g.name_any()).collect();
    let services: Vec<Arc<GameServer>> = live.into_iter().map(Arc::new).collect();
    let gone: Vec<_> = to_delete(&wanted_names, &services).into_iter().map(|g| g.name_any()).collect();
    assert_eq!(gone, ["z1-game-99"]);
}

#[test]
fn a_server_with_players_is_drained_and_goes_only_when_its_gates_are_true_or_its_drain_times_out() {
    let now = Timestamp::now();
    let want: Vec<GameServer> = wanted().into_iter().map(|g| with_gates(g, &["NoPlayers"])).collect();
    let keep: Vec<GameServer> = want[..6].to_vec();
    let mut live: Vec<GameServer> = want.iter().cloned().map(ready).collect();

    // Shrinking the range: game-7 is marked NotInService, not deleted.
    let p = plan(&keep, &live, now);
    assert_eq!(p.drains, ["z1-game-7"]);
    assert!(p.delete.is_empty());
    let (drained, _) = p.apply.iter().find(|(g, _)| g.name_any() == "z1-game-7").unwrap();
    let c = drained.spec.not_in_service().expect("NotInService");
    assert_eq!((c.effective, c.message.as_deref()), (Some(true), Some("no longer in spec.services")));
    assert_eq!(
        crate::zone::server_template_hash(&drained.spec),
        crate::zone::server_template_hash(&live[6].spec),
        "its pod stays"
    );

    // Drained, players still there: it stays, and the zone says why.
    live[6].spec = drained.spec.clone();
    let p = plan(&keep, &live, now);
    assert!(p.apply.is_empty() && p.delete.is_empty());
    assert_eq!(p.draining, ["z1-game-7: waiting for deletable gates NoPlayers"]);
    let mut status = GameZoneStatus::default();
    report_servers(&mut status, &readiness(&keep, &by_name(&live)), &p.draining);
    assert_eq!(status.phase, Some(ZonePhase::Deploying), "a zone draining is not yet where it was asked to be");
    assert!(
        condition(&status, types::SERVERS_READY)
            .2
            .contains("draining z1-game-7: waiting for deletable gates NoPlayers")
    );

    // The game says its players left: it goes.
    live[6] = gate(live[6].clone(), "NoPlayers", true);
    assert_eq!(plan(&keep, &live, now).delete, ["z1-game-7"]);

    // Or the drain times out.
    live[6] = gate(live[6].clone(), "NoPlayers", false);
    live[6].spec.lifecycle.drain_timeout = Some(Interval::from_secs(60));
    assert_eq!(plan(&keep, &live, now + Duration::from_secs(30)).delete, Vec::<String>::new());
    assert_eq!(plan(&keep, &live, now + Duration::from_secs(61)).delete, ["z1-game-7"]);

    // Wanted again before it went: back in service.
    let p = plan(&want, &live, now);
    let (back, _) = p.apply.iter().find(|(g, _)| g.name_any() == "z1-game-7").expect("re-applied");
    assert!(back.spec.not_in_service().is_none());
}

/// `gs` with the game's SDK state, said by its current pod.
fn said(mut gs: GameServer, state: SdkState, reserved_until: Option<Timestamp>) -> GameServer {
    let status = gs.status.get_or_insert_with(Default::default);
    status.pod_uid = Some("pod-1".into());
    status.sdk = Some(SdkStatus {
        pod_uid: Some("pod-1".into()),
        state: Some(state),
        reserved_until: reserved_until.map(Time),
        ..Default::default()
    });
    gs
}

#[test]
fn an_allocated_or_reserved_server_stays_whatever_its_gates_and_timeout_say() {
    let now = Timestamp::now();
    let want = wanted();
    let keep: Vec<GameServer> = want[..6].to_vec();
    // No deletable gates at all: without the SDK's word it would go at once.
    let mut live: Vec<GameServer> = want.iter().cloned().map(ready).collect();
    live[6] = said(live[6].clone(), SdkState::Allocated, None);
    let p = plan(&keep, &live, now);
    assert_eq!(p.drains, ["z1-game-7"], "drained first, not deleted");
    assert!(p.delete.is_empty());
    live[6].spec = p.apply.iter().find(|(g, _)| g.name_any() == "z1-game-7").unwrap().0.spec.clone();
    live[6].spec.lifecycle.drain_timeout = Some(Interval::from_secs(60));
    let p = plan(&keep, &live, now + Duration::from_secs(3600));
    assert!(p.delete.is_empty(), "players outlast drainTimeout");
    assert!(p.draining[0].contains("Allocated"), "{:?}", p.draining);

    // Reserved until a time: held until then, deletable after.
    live[6] = said(live[6].clone(), SdkState::Reserved, Some(now + Duration::from_secs(30)));
    assert!(plan(&keep, &live, now).delete.is_empty());
    assert_eq!(plan(&keep, &live, now + Duration::from_secs(31)).delete, ["z1-game-7"]);
    // Back to Ready: players left.
    live[6] = said(live[6].clone(), SdkState::RequestReady, None);
    assert_eq!(plan(&keep, &live, now).delete, ["z1-game-7"]);

    // What a replaced pod's process said does not hold its successor.
    live[6] = said(live[6].clone(), SdkState::Allocated, None);
    live[6].status.as_mut().unwrap().pod_uid = Some("pod-2".into());
    assert_eq!(plan(&keep, &live, now).delete, ["z1-game-7"]);
}

#[test]
fn a_rolling_update_takes_out_at_most_max_unavailable_each_drained_first() {
    let now = Timestamp::now();
    let old: Vec<GameServer> = wanted().into_iter().map(|g| ready(with_gates(g, &["NoPlayers"]))).collect();
    let mut new = wanted();
    for g in &mut new {
        g.spec.template.spec.as_mut().unwrap().containers[0].image = Some("svc:2".into());
        g.spec.lifecycle.deletable_gates = vec!["NoPlayers".into()];
        g.labels_mut().insert(VERSION_LABEL.into(), "2".into());
    }
    let two = BTreeMap::from([(
        "game".to_string(),
        UpdateStrategy { max_unavailable: Some(IntOrString::Int(2)), ..Default::default() },
    )]);
    let p = plan_servers(&new, &by_name(&old), &two, &BTreeMap::new(), now, |_, _| false);
    assert_eq!(p.drains, ["z1-game-1", "z1-game-2"], "two at a time, each drained first");
    assert!(names(&p.apply).iter().all(|n| p.drains.contains(n)), "no pod replaced before its drain");
    let versions: Vec<_> = p.apply.iter().map(|(g, _)| g.labels().get(VERSION_LABEL).cloned()).collect();
    assert_eq!(versions, [Some("1".into()), Some("1".into())], "a drained server still runs its old version");
    assert_eq!(p.draining.len(), 5);
    assert!(p.draining[0].ends_with("waiting for its turn to update (maxUnavailable)"), "{:?}", p.draining);
    assert!(p.waiting_turns, "the next server back in service lets the next one go");

    // game-1 drained and deletable: its pod is replaced from the new template; game-2 still has players.
    let mut live = old.clone();
    for (i, players_left) in [(0, true), (1, false)] {
        live[i].spec = p.apply.iter().find(|(g, _)| g.name_any() == live[i].name_any()).unwrap().0.spec.clone();
        live[i].status.as_mut().unwrap().state = Some(ServerState::Draining);
        live[i] = gate(live[i].clone(), "NoPlayers", players_left);
    }
    let p = plan_servers(&new, &by_name(&live), &two, &BTreeMap::new(), now, |_, _| false);
    assert_eq!(names(&p.apply), ["z1-game-1"]);
    assert_eq!(p.apply[0].0.spec, new[0].spec, "the new template, back in service");
    assert_eq!(p.apply[0].0.labels().get(VERSION_LABEL).map(String::as_str), Some("2"), "and the new version");
    assert!(p.drains.is_empty(), "two are out: nothing more starts");

    // game-1 has its new template, but its status still speaks of the old pod: it is out until
    // the server controller reports on the new one.
    live[0].spec = new[0].spec.clone();
    live[0].metadata.generation = Some(3);
    live[0].status = ready(live[0].clone()).status.map(|s| GameServerStatus { observed_generation: Some(2), ..s });
    let p = plan_servers(&new, &by_name(&live), &two, &BTreeMap::new(), now, |_, _| false);
    assert!(p.drains.is_empty(), "game-1 not yet reported and game-2 draining: nothing more starts");
    assert!(!back_in_service(&live[0]), "its status is of the spec before");
    live[0].status.as_mut().unwrap().observed_generation = Some(3);
    assert!(back_in_service(&live[0]));
    let p = plan_servers(&new, &by_name(&live), &two, &BTreeMap::new(), now, |_, _| false);
    assert_eq!(p.drains, ["z1-game-3"], "game-1 reported Ready on its new template: the next one starts");

    // None left to wait: the last ones go.
    let all = BTreeMap::from([(
        "game".to_string(),
        UpdateStrategy { max_unavailable: Some(IntOrString::String("100%".into())), ..Default::default() },
    )]);
    assert!(!plan_servers(&new, &by_name(&old), &all, &BTreeMap::new(), now, |_, _| false).waiting_turns);

    // Recreate drains every server at once.
    let recreate =
        BTreeMap::from([("game".to_string(), UpdateStrategy { type_: UpdateType::Recreate, max_unavailable: None })]);
    assert_eq!(plan_servers(&new, &by_name(&old), &recreate, &BTreeMap::new(), now, |_, _| false).drains.len(), 7);
}

#[test]
fn an_instance_counts_once_ready_on_its_current_template_and_the_rest_are_named() {
    let want = wanted();
    let mut live: Vec<GameServer> = want.iter().cloned().map(ready).collect();
    // Ready, but on an older template.
    live[0].status.as_mut().unwrap().template_hash = Some("old".into());
    live[1].status = Some(GameServerStatus {
        state: Some(ServerState::Scheduling),
        message: Some("0/3 nodes have free ports".into()),
        ..Default::default()
    });
    let r = readiness(&want, &by_name(&live[..6]));
    assert_eq!((r.desired, r.ready), (7, 4));
    assert_eq!(r.waiting, ["z1-game-1 Ready", "z1-game-2 Scheduling: 0/3 nodes have free ports", "z1-game-7 Pending"]);

    let mut status = GameZoneStatus { observed_generation: Some(3), ..Default::default() };
    report_servers(&mut status, &r, &[]);
    assert_eq!((status.phase, status.ready_text.as_deref()), (Some(ZonePhase::Deploying), Some("4/7")));
    assert!(condition(&status, types::READY).2.contains("waiting for z1-game-1 Ready, z1-game-2 Scheduling"));

    let all: Vec<GameServer> = want.iter().cloned().map(ready).collect();
    report_servers(&mut status, &readiness(&want, &by_name(&all)), &[]);
    assert_eq!((status.phase, status.ready_servers), (Some(ZonePhase::Running), 7));
    assert_eq!(condition(&status, types::SERVERS_READY), ("True", "AllReady", "7 of 7 servers Ready"));

    let none = readiness(&want, &BTreeMap::new());
    assert_eq!(none.waiting.len(), 5, "a zone's status names the first five waiting");
}

#[test]
fn a_deleting_zone_is_terminating_and_says_what_it_waits_for() {
    let servers: Vec<Arc<GameServer>> = wanted().into_iter().map(Arc::new).collect();
    let mut status = GameZoneStatus { phase: Some(ZonePhase::Running), ..Default::default() };
    report_terminating(&mut status, &format!("{} GameServer(s) to terminate: {}", servers.len(), some_names(&servers)));
    assert_eq!(status.phase, Some(ZonePhase::Terminating));
    let (ok, reason, message) = condition(&status, types::READY);
    assert_eq!((ok, reason), ("False", "Terminating"));
    assert!(
        message.ends_with(
            "7 GameServer(s) to terminate: z1-game-1, z1-game-2, z1-game-3, z1-game-4, z1-game-5 and 2 more"
        ),
        "{message}"
    );
}

#[test]
fn one_event_per_transition_led_by_ready() {
    let mut before = GameZoneStatus::default();
    conditions::set(&mut before.conditions, types::READY, false, "Deploying", "1 of 2", None);
    let mut after = before.clone();
    conditions::set(&mut after.conditions, types::READY, false, "Deploying", "2 of 3", None);
    assert_eq!(transition(&before, &after), None, "only the message moved");
    conditions::set(&mut after.conditions, types::ARTIFACTS_READY, false, "FetchFailed", "unreachable", None);
    conditions::set(&mut after.conditions, types::READY, false, "FetchFailed", "unreachable", None);
    let (warning, reason, note) = transition(&before, &after).unwrap();
    assert!(warning);
    assert_eq!(reason, "FetchFailed");
    assert_eq!(note, "Ready: unreachable; ArtifactsReady: unreachable");
    let mut deleting = after.clone();
    report_terminating(&mut deleting, "1 GameServer(s) to terminate: z1-game-1");
    assert!(!transition(&after, &deleting).unwrap().0, "a deletion under way is no warning");
}

#[test]
fn the_migrater_s_own_error_is_taken_from_its_newest_failed_pod() {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus};
    let pod = |age: u64, exit: i32, message: &str| {
        let mut p = Pod::default();
        p.metadata.creation_timestamp = Some(Time(Timestamp::now() - Duration::from_secs(age)));
        p.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "migrate".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: exit,
                        message: Some(message.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    };
    let pods = [
        pod(60, 1, "error: old failure"),
        pod(10, 1, "starting\napplying 3/u\nerror: migration failed in line 0: SELEC 1; (details: Error 1064: syntax)"),
        pod(5, 0, ""),
    ];
    let said = job_said(&pods, crate::zone::MIGRATE_CONTAINER).unwrap();
    assert!(said.ends_with("(details: Error 1064: syntax)") && said.starts_with("starting"), "{said}");
    assert_eq!(job_said(&[pod(1, 0, "ok")], crate::zone::MIGRATE_CONTAINER), None);
}

#[test]
fn a_deleted_zone_s_drains_end_at_the_limit() {
    let deleted: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let hour = Duration::from_secs(3600);
    let at = |secs: i64| deleted + k8s_openapi::jiff::SignedDuration::from_secs(secs);
    assert_eq!(drain_limit_left(deleted, hour, at(600)), Some(Duration::from_secs(3000)));
    assert_eq!(drain_limit_left(deleted, hour, at(3600)), None);
    assert_eq!(drain_limit_left(deleted, hour, at(7200)), None);
}

#[test]
fn artifacts_are_resolved_again_no_more_often_than_the_floor() {
    let mut z = zone();
    let floor = Duration::from_secs(30);
    assert_eq!(interval(&z, floor), Some(Duration::from_secs(300)), "the default");
    z.spec.artifacts_interval = Some(serde_json::from_value(serde_json::json!("1s")).unwrap());
    assert_eq!(interval(&z, floor), Some(floor), "1s is stretched to the floor");
    z.spec.artifacts_interval = Some(serde_json::from_value(serde_json::json!("10m")).unwrap());
    assert_eq!(interval(&z, floor), Some(Duration::from_secs(600)));
    z.spec.artifacts_interval = Some(serde_json::from_value(serde_json::json!("0s")).unwrap());
    assert_eq!(interval(&z, floor), None, "0 turns re-resolving off");
}

#[test]
fn artifacts_mounted_says_which_servers_copy_and_why_and_goes_when_no_image_is_mounted() {
    let mut status = GameZoneStatus::default();
    report_tree_mounts(&mut status, true, &[]);
    assert_eq!(condition(&status, types::ARTIFACTS_MOUNTED).0, "True");
    let copied = [
        ("z-game-2".to_string(), "on node-7, image volume mounted wrong: 0 files".to_string()),
        ("z-game-3".into(), "x".into()),
    ];
    report_tree_mounts(&mut status, true, &copied);
    let (ok, reason, message) = condition(&status, types::ARTIFACTS_MOUNTED);
    assert_eq!((ok, reason), ("False", "CopyFallback"));
    assert!(message.starts_with("z-game-2 (and 1 more) copy the tree from the registry: on node-7"), "{message}");
    report_tree_mounts(&mut status, false, &copied);
    assert!(status.conditions.iter().all(|c| c.type_ != types::ARTIFACTS_MOUNTED));
}

#[test]
fn a_pre_warm_covers_the_nodes_of_servers_still_on_another_tree_and_lets_the_rollout_go_once_settled() {
    use crate::api::artifacts::TreeImage;
    let tree = TreeImage { image: "r/l@sha256:new".into(), tree_digest: "sha256:t".into(), ..Default::default() };
    let mut servers = wanted();
    assert!(servers.len() >= 3);
    let on = |gs: &mut GameServer, node: &str, image: Option<&str>| {
        gs.status = Some(GameServerStatus { node_name: Some(node.into()), ..Default::default() });
        let spec = gs.spec.template.spec.as_mut().unwrap();
        spec.volumes = image.map(|i| {
            vec![serde_json::from_value(json!({"name": "artifacts-image", "image": {"reference": i}})).unwrap()]
        });
    };
    on(&mut servers[0], "node-a", Some("r/l@sha256:old"));
    on(&mut servers[1], "node-b", None);
    on(&mut servers[2], "node-c", Some("r/l@sha256:new"));
    let mut copying = servers[0].clone();
    copying.metadata.name = Some("copying".into());
    on(&mut copying, "node-d", None);
    copying.status.as_mut().unwrap().tree_copied = Some("on node-d, image volume mounted wrong: …".into());
    let live: BTreeMap<String, &GameServer> = servers.iter().chain([&copying]).map(|g| (g.name_any(), g)).collect();
    let nodes = nodes_to_warm(&live, &tree);
    assert_eq!(nodes.iter().map(String::as_str).collect::<Vec<_>>(), ["node-a", "node-b"]);

    let now = Timestamp::now();
    let pod = |node: &str, phase: &str, age_s: i64| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("w-{node}"), "creationTimestamp": (now - k8s_openapi::jiff::SignedDuration::from_secs(age_s)).to_string()},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "containerStatuses": [{"name": "warm", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 1, "message": "image volume mounted wrong: 0 files"}}}]}
        }))
        .unwrap()
    };
    let limit = Duration::from_secs(300);
    let p = prewarm(&nodes, &[], now, limit);
    assert_eq!((p.create.len(), p.done), (2, false));
    let p = prewarm(&nodes, &[pod("node-a", "Succeeded", 10), pod("node-b", "Running", 10)], now, limit);
    assert_eq!(
        (p.warm.clone(), p.pulling.clone(), p.done),
        (vec!["node-a".to_string()], vec!["node-b".to_string()], false)
    );
    let mut status = GameZoneStatus::default();
    report_prewarm(&mut status, &p);
    let (ok, reason, message) = condition(&status, types::READY);
    assert_eq!((ok, reason), ("False", "PreWarming"));
    assert!(message.contains("1 of 2 node(s) hold it; pulling on node-b"), "{message}");
    let p = prewarm(&nodes, &[pod("node-a", "Succeeded", 10), pod("node-b", "Failed", 10)], now, limit);
    assert!(p.done && p.failed[0].1.contains("mounted wrong"), "a failed node does not hold the rollout: {p:?}");
    let p = prewarm(&nodes, &[pod("node-a", "Succeeded", 400), pod("node-b", "Pending", 400)], now, limit);
    assert!(p.done, "nor does one that pulls past the limit");
    // The warm container's exit 0 is the pull done, before the kubelet's next look sets the phase.
    let mut pulled = pod("node-b", "Running", 10);
    let statuses = pulled.status.as_mut().unwrap().container_statuses.as_mut().unwrap();
    statuses[0].name = build::WARM_CONTAINER.into();
    statuses[0].state.as_mut().unwrap().terminated.as_mut().unwrap().exit_code = 0;
    let p = prewarm(&nodes, &[pod("node-a", "Succeeded", 10), pulled], now, limit);
    assert_eq!((p.warm.len(), p.done), (2, true), "{p:?}");
}

#[test]
fn a_job_is_done_once_its_pod_s_container_ended_well() {
    let pod = |container: &str, state: serde_json::Value| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "z1-pack-h-x", "creationTimestamp": "2026-12-07T10:00:00Z"},
            "status": {"phase": "Running", "containerStatuses": [{"name": container, "image": "i", "imageID": "",
                "ready": false, "restartCount": 0, "state": state}]}
        }))
        .unwrap()
    };
    let ended = |code: i32| json!({"terminated": {"exitCode": code}});
    assert_eq!(running_job(&[], build::PACK_CONTAINER), JobOutcome::Running(None));
    assert_eq!(running_job(&[pod(build::PACK_CONTAINER, ended(0))], build::PACK_CONTAINER), JobOutcome::Succeeded);
    let failed_then_ok = [pod(build::PACK_CONTAINER, ended(1)), pod(build::PACK_CONTAINER, ended(0))];
    assert_eq!(running_job(&failed_then_ok, build::PACK_CONTAINER), JobOutcome::Succeeded);
    assert_eq!(running_job(&[pod(build::PACK_CONTAINER, ended(1))], build::PACK_CONTAINER), JobOutcome::Running(None));
    assert_eq!(
        running_job(&[pod("other", ended(0))], build::PACK_CONTAINER),
        JobOutcome::Running(None),
        "another container"
    );
    let pulling =
        pod(build::MIGRATE_CONTAINER, json!({"waiting": {"reason": "ErrImagePull", "message": "no such host"}}));
    let JobOutcome::Running(Some(why)) = running_job(&[pulling], build::MIGRATE_CONTAINER) else { panic!("stuck") };
    assert!(why.contains("ErrImagePull"), "{why}");
}

#[test]
fn servers_on_a_leaving_node_are_drained_whatever_the_budget_and_move_once_they_may() {
    let now = Timestamp::now();
    let want: Vec<GameServer> = wanted().into_iter().map(|g| with_gates(g, &["NoPlayers"])).collect();
    let mut live: Vec<GameServer> = want.iter().cloned().map(ready).collect();
    for (i, gs) in live.iter_mut().enumerate() {
        gs.status.as_mut().unwrap().node_name = Some(if i < 3 { "node-1" } else { "node-2" }.into());
    }
    let leaving = BTreeMap::from([("node-1".to_string(), "node-1 is cordoned".to_string())]);
    let plan_with =
        |live: &[GameServer]| plan_servers(&want, &by_name(live), &BTreeMap::new(), &leaving, now, |_, _| false);

    // Every server on node-1 is drained at once (maxUnavailable is 1), the others stay.
    let p = plan_with(&live);
    assert_eq!(p.drains, ["z1-game-1", "z1-game-2", "z1-game-3"]);
    let (drained, _) = p.apply.iter().find(|(g, _)| g.name_any() == "z1-game-1").unwrap();
    let why = drained.spec.not_in_service().unwrap().message.clone().unwrap();
    assert_eq!(why, "its node is leaving (node-1 is cordoned)");
    assert!(p.delete.is_empty(), "the servers stay: their pods move");

    // Drained: one whose players left moves (its pod, by the server controller); one whose
    // players are still there waits, and the zone says where and for what.
    for (gs, _) in &p.apply {
        live.iter_mut().find(|l| l.name_any() == gs.name_any()).unwrap().spec = gs.spec.clone();
    }
    live[0] = gate(live[0].clone(), "NoPlayers", true);
    live[2].status.as_mut().unwrap().state = Some(ServerState::Starting);
    let p = plan_with(&live);
    assert!(p.apply.is_empty(), "{:?}", names(&p.apply));
    assert_eq!(
        p.draining,
        [
            "z1-game-1: moving off node-1 is cordoned",
            "z1-game-2: on node-1 is cordoned: waiting for deletable gates NoPlayers",
            "z1-game-3: moving off node-1 is cordoned",
        ]
    );

    // Its pod is on node-2 now: back in service.
    live[0].status.as_mut().unwrap().node_name = Some("node-2".into());
    let p = plan_with(&live);
    let (back, _) = p.apply.iter().find(|(g, _)| g.name_any() == "z1-game-1").expect("re-applied");
    assert!(back.spec.not_in_service().is_none());

    // A type whose servers may always be evicted moves without a drain.
    let mut always = live[1].clone();
    always.spec.lifecycle.eviction = Eviction::Always;
    assert_eq!(move_off(&always.spec, always.status.as_ref(), now), Move::Now);
    assert_eq!(move_off(&want[1].spec, Some(&ready(want[1].clone()).status.unwrap()), now), Move::Drain);
}
