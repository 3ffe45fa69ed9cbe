//! The local control plane is a real Kubernetes: these tests use it the way
//! the operator will (CRDs, server-side apply, watches, Deployments, Jobs,
//! scheduling, garbage collection) and check what a user would see.
//!
//! Run with `cargo test --test controlplane`; the first run builds the
//! control plane (see tests/controlplane/cp.sh).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, Event, Namespace, Node, Pod, PodSpec, PodTemplateSpec,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use common::{namespace, start_private, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
const FIELD_MANAGER: &str = "gamezone-controlplane-test";
/// Never pulled: KWOK only pretends to run containers.
const IMAGE: &str = "registry.invalid/gamezone/placeholder:1";

/// A small custom resource, only for these tests.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "controlplane.test.gamezone.dev", version = "v1", kind = "Widget", namespaced)]
#[kube(status = "WidgetStatus")]
struct WidgetSpec {
    /// How big the widget is.
    size: i32,
    /// Optional colour, to show that server-side apply owns fields separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<String>,
}

/// Status of a widget.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
struct WidgetStatus {
    /// Whether anyone looked at it.
    seen: bool,
}

#[tokio::test]
async fn api_server_reports_the_pinned_version() {
    let client = common::shared_client().await;
    let version = client.apiserver_version().await.expect("GET /version");
    assert_eq!(version.git_version, "v1.37.2", "{version:?}");
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "37"));
}

#[tokio::test]
async fn custom_resources_can_be_created_listed_watched_and_applied() {
    let ns = namespace("crd").await;
    install_widget_crd(&ns.client).await;
    let widgets: Api<Widget> = ns.api();

    let empty = widgets.list(&ListParams::default()).await.expect("list widgets");
    assert!(empty.items.is_empty());
    let since = empty.metadata.resource_version.expect("list has a resourceVersion");
    let mut events = widgets.watch(&WatchParams::default().timeout(120), &since).await.expect("watch widgets").boxed();

    let created = widgets
        .create(&PostParams::default(), &Widget::new("first", WidgetSpec { size: 1, color: None }))
        .await
        .expect("create widget");
    assert_eq!(created.spec.size, 1);

    let first_event = tokio::time::timeout(TIMEOUT, events.try_next())
        .await
        .expect("a watch event within the timeout")
        .expect("watch stream error")
        .expect("watch stream ended");
    match first_event {
        WatchEvent::Added(w) => assert_eq!(w.name_any(), "first"),
        other => panic!("expected Added(first), got {other:?}"),
    }

    // Server-side apply: the field manager is recorded as owning what it applied.
    let applied = widgets
        .patch(
            "second",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(Widget::new("second", WidgetSpec { size: 2, color: Some("teal".into()) })),
        )
        .await
        .expect("server-side apply widget");
    assert_eq!(applied.spec.color.as_deref(), Some("teal"));
    let managers: Vec<(String, String)> = applied
        .managed_fields()
        .iter()
        .map(|m| (m.manager.clone().unwrap_or_default(), m.operation.clone().unwrap_or_default()))
        .collect();
    assert!(
        managers.contains(&(FIELD_MANAGER.to_string(), "Apply".to_string())),
        "managedFields should name {FIELD_MANAGER} with operation Apply: {managers:?}"
    );

    let listed = widgets.list(&ListParams::default()).await.expect("list widgets");
    let mut names: Vec<String> = listed.iter().map(|w| w.name_any()).collect();
    names.sort();
    assert_eq!(names, ["first", "second"]);

    let second_event = tokio::time::timeout(TIMEOUT, events.try_next())
        .await
        .expect("a second watch event within the timeout")
        .expect("watch stream error")
        .expect("watch stream ended");
    assert!(matches!(&second_event, WatchEvent::Added(w) if w.name_any() == "second"), "{second_event:?}");

    // The status subresource is separate from the spec.
    let status = serde_json::json!({ "status": { "seen": true } });
    let with_status = widgets
        .patch_status("second", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch widget status");
    assert_eq!(with_status.status, Some(WidgetStatus { seen: true }));
    assert_eq!(with_status.spec.size, 2);
}

/// Applies the Widget CRD (idempotent, other test binaries may do it too) and waits until it is served.
async fn install_widget_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = Widget::crd();
    let name = crd.name_any();
    crds.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd)).await.expect("apply Widget CRD");
    wait_for(&format!("CRD {name} Established"), TIMEOUT, || async {
        let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        match conditions.iter().find(|c| c.type_ == "Established") {
            Some(c) if c.status == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn deployment_pod_runs_on_a_simulated_node_with_an_ip() {
    let ns = namespace("deploy").await;
    let deployments: Api<Deployment> = ns.api();
    deployments.create(&PostParams::default(), &deployment("web", 1)).await.expect("create deployment");

    let pods: Api<Pod> = ns.api();
    let pod = wait_for("the Deployment's pod to run", TIMEOUT, || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.map_err(|e| e.to_string())?;
        let phases: Vec<_> = list.iter().map(|p| (p.name_any(), phase(p))).collect();
        list.items.into_iter().find(|p| phase(p) == "Running").ok_or(format!("{phases:?}"))
    })
    .await;

    let status = pod.status.clone().expect("pod status");
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone()).expect("pod is bound to a node");
    assert!(node_name.starts_with("node-"), "scheduled onto {node_name}");
    let pod_ip = status.pod_ip.expect("pod IP");
    let host_ip = status.host_ip.expect("host IP");

    // The IP comes from the node's podCIDR and the host IP is the node's address.
    let node = Api::<Node>::all(ns.client.clone()).get(&node_name).await.expect("get node");
    let pod_cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone()).expect("node podCIDR");
    let cidr_prefix = pod_cidr.trim_end_matches("0/24");
    assert!(pod_ip.starts_with(cidr_prefix), "pod IP {pod_ip} outside {pod_cidr}");
    let internal_ip = node
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .expect("node InternalIP")
        .address;
    assert_eq!(host_ip, internal_ip);

    let ready = wait_for("the Deployment to report 1 available replica", TIMEOUT, || async {
        let d = deployments.get("web").await.map_err(|e| e.to_string())?;
        let available = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
        if available == 1 { Ok(d) } else { Err(format!("{:?}", d.status)) }
    })
    .await;
    assert_eq!(ready.status.and_then(|s| s.ready_replicas), Some(1));
}

#[tokio::test]
async fn job_pod_completes_and_the_job_succeeds() {
    let ns = namespace("job").await;
    let jobs: Api<Job> = ns.api();
    let job = Job {
        metadata: ObjectMeta { name: Some("once".into()), ..ObjectMeta::default() },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![container("work", None)],
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    };
    jobs.create(&PostParams::default(), &job).await.expect("create job");

    let done = wait_for("the Job to complete", TIMEOUT, || async {
        let j = jobs.get("once").await.map_err(|e| e.to_string())?;
        let status = j.status.clone().unwrap_or_default();
        let complete = status.conditions.iter().flatten().any(|c| c.type_ == "Complete" && c.status == "True");
        if complete { Ok(status) } else { Err(format!("{status:?}")) }
    })
    .await;
    assert_eq!(done.succeeded, Some(1));
    assert_eq!(done.failed.unwrap_or(0), 0);

    let pods: Api<Pod> = ns.api();
    let pod = pods
        .list(&ListParams::default().labels("job-name=once"))
        .await
        .expect("list job pods")
        .items
        .pop()
        .expect("the job's pod still exists");
    assert_eq!(phase(&pod), "Succeeded");
    let exit_code = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .map(|t| t.exit_code);
    assert_eq!(exit_code, Some(0));
}

#[tokio::test]
async fn second_pod_wanting_a_taken_host_port_stays_pending_on_one_node() {
    let cluster = start_private(1);
    let client = cluster.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &host_port_pod("first", 7777)).await.expect("create first");
    wait_for_phase(&pods, "first", "Running").await;

    pods.create(&PostParams::default(), &host_port_pod("second", 7777)).await.expect("create second");
    let events: Api<Event> = Api::namespaced(client, "default");
    let message = wait_for("a FailedScheduling event for pod second", TIMEOUT, || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.kind=Pod,involvedObject.name=second"))
            .await
            .map_err(|e| e.to_string())?;
        let seen: Vec<_> = list.iter().map(|e| (e.reason.clone(), e.message.clone())).collect();
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .and_then(|e| e.message)
            .ok_or(format!("{seen:?}"))
    })
    .await;
    assert!(
        message.contains("didn't have free ports for the requested pod ports"),
        "unexpected scheduler message: {message}"
    );

    let second = pods.get("second").await.expect("get second");
    assert_eq!(phase(&second), "Pending");
    assert_eq!(second.spec.and_then(|s| s.node_name), None, "second must not be bound");
}

#[tokio::test]
async fn pods_wanting_the_same_host_port_run_on_different_nodes_of_two() {
    let cluster = start_private(2);
    let pods: Api<Pod> = Api::namespaced(cluster.client().await, "default");
    for name in ["first", "second"] {
        pods.create(&PostParams::default(), &host_port_pod(name, 7777)).await.expect("create pod");
    }
    let first = wait_for_phase(&pods, "first", "Running").await;
    let second = wait_for_phase(&pods, "second", "Running").await;
    let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone()).expect("bound");
    assert_ne!(node(&first), node(&second), "both pods on one node despite the host port");
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_children() {
    let ns = namespace("gc").await;

    // A ConfigMap owned by another ConfigMap.
    let config_maps: Api<ConfigMap> = ns.api();
    let parent = config_maps.create(&PostParams::default(), &config_map("parent", None)).await.expect("create parent");
    let owner = owner_reference(&parent);
    config_maps.create(&PostParams::default(), &config_map("child", Some(owner))).await.expect("create child");
    config_maps.delete("parent", &DeleteParams::background()).await.expect("delete parent");
    wait_gone(&config_maps, "child").await;

    // A Deployment: foreground deletion ends only when its ReplicaSet and pods are gone.
    let deployments: Api<Deployment> = ns.api();
    deployments.create(&PostParams::default(), &deployment("app", 2)).await.expect("create deployment");
    let pods: Api<Pod> = ns.api();
    wait_for("2 running pods", TIMEOUT, || async {
        let list = pods.list(&ListParams::default().labels("app=app")).await.map_err(|e| e.to_string())?;
        let phases: Vec<_> = list.iter().map(phase).collect();
        if phases.iter().filter(|p| *p == "Running").count() == 2 { Ok(()) } else { Err(format!("{phases:?}")) }
    })
    .await;
    deployments.delete("app", &DeleteParams::foreground()).await.expect("delete deployment");
    wait_gone(&deployments, "app").await;
    let replica_sets: Api<ReplicaSet> = ns.api();
    assert!(replica_sets.list(&ListParams::default()).await.expect("list replicasets").items.is_empty());
    assert!(pods.list(&ListParams::default()).await.expect("list pods").items.is_empty());
}

#[tokio::test]
async fn deleting_a_namespace_finishes() {
    let ns = namespace("nsdel").await;
    let config_maps: Api<ConfigMap> = ns.api();
    config_maps.create(&PostParams::default(), &config_map("data", None)).await.expect("create configmap");
    let deployments: Api<Deployment> = ns.api();
    deployments.create(&PostParams::default(), &deployment("app", 1)).await.expect("create deployment");
    let pods: Api<Pod> = ns.api();
    wait_for("a running pod", TIMEOUT, || async {
        let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        list.iter().find(|p| phase(p) == "Running").map(|_| ()).ok_or(format!("{} pods", list.items.len()))
    })
    .await;

    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    let name = ns.name.clone();
    ns.cleanup().await;
    wait_for(&format!("namespace {name} to disappear"), TIMEOUT, || async {
        match namespaces.get_opt(&name).await {
            Ok(None) => Ok(()),
            Ok(Some(n)) => Err(format!("still there: {:?}", n.status)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

// ---------------------------------------------------------------- helpers

fn phase(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
}

async fn wait_for_phase(pods: &Api<Pod>, name: &str, want: &str) -> Pod {
    wait_for(&format!("pod {name} to be {want}"), TIMEOUT, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        if phase(&pod) == want { Ok(pod) } else { Err(format!("phase {:?}", phase(&pod))) }
    })
    .await
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(&format!("{name} to be deleted"), TIMEOUT, || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("still there".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

fn labels(app: &str) -> BTreeMap<String, String> {
    [("app".to_string(), app.to_string())].into()
}

fn container(name: &str, host_port: Option<i32>) -> Container {
    Container {
        name: name.into(),
        image: Some(IMAGE.into()),
        ports: host_port.map(|port| {
            vec![ContainerPort {
                container_port: port,
                host_port: Some(port),
                protocol: Some("UDP".into()),
                ..ContainerPort::default()
            }]
        }),
        ..Container::default()
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    Deployment {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(labels(name)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(name)), ..ObjectMeta::default() }),
                spec: Some(PodSpec { containers: vec![container("main", None)], ..PodSpec::default() }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// A game-server-like pod: one UDP host port.
fn host_port_pod(name: &str, port: i32) -> Pod {
    Pod {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        spec: Some(PodSpec { containers: vec![container("server", Some(port))], ..PodSpec::default() }),
        ..Pod::default()
    }
}

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some([("key".to_string(), "value".to_string())].into()),
        ..ConfigMap::default()
    }
}

fn owner_reference(owner: &ConfigMap) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: owner.name_any(),
        uid: owner.uid().expect("created object has a uid"),
        ..OwnerReference::default()
    }
}
