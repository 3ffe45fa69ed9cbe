//! What a server asks for (`PortRequest`) and what it gets (`Allocation`).

use serde::{Deserialize, Serialize};

use super::AllocError;
use super::pod::{port_env_name, same_env_name};

pub use crate::api::{PortPolicy, PortProtocol};

/// One port a server asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRequest {
    /// Port name, unique within the server; also names the `GAMEZONE_PORT_*` env var.
    pub name: String,
    /// Container that listens on the port (game server or any sidecar).
    pub container: String,
    /// Port the container listens on: required for Dynamic and None, optional for Static
    /// (defaults to the host port), must be empty for Passthrough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
    /// Host port: required for Static, must be empty otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: PortProtocol,
    /// How the host port is chosen.
    #[serde(default)]
    pub policy: PortPolicy,
}

impl PortRequest {
    /// A Dynamic request: the operator picks the host port.
    pub fn dynamic(name: &str, container: &str, container_port: u16, protocol: PortProtocol) -> Self {
        Self::build(name, container, Some(container_port), None, protocol, PortPolicy::Dynamic)
    }

    /// A Static request for `host_port`, with the container listening on the same number.
    pub fn static_port(name: &str, container: &str, host_port: u16, protocol: PortProtocol) -> Self {
        Self::build(name, container, None, Some(host_port), protocol, PortPolicy::Static)
    }

    /// A Passthrough request: container and host port are the same, operator-picked number.
    pub fn passthrough(name: &str, container: &str, protocol: PortProtocol) -> Self {
        Self::build(name, container, None, None, protocol, PortPolicy::Passthrough)
    }

    /// A request without a host port.
    pub fn no_host_port(name: &str, container: &str, container_port: u16, protocol: PortProtocol) -> Self {
        Self::build(name, container, Some(container_port), None, protocol, PortPolicy::None)
    }

    fn build(
        name: &str,
        container: &str,
        container_port: Option<u16>,
        host_port: Option<u16>,
        protocol: PortProtocol,
        policy: PortPolicy,
    ) -> Self {
        Self { name: name.to_owned(), container: container.to_owned(), container_port, host_port, protocol, policy }
    }
}

/// The ports one server got for one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// Port name, as requested.
    pub name: String,
    /// Container that listens on the port.
    pub container: String,
    /// Port the container listens on (for Passthrough, equal to the host port).
    pub container_port: u16,
    /// Host port; `None` only for policy None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Transport protocol.
    pub protocol: PortProtocol,
    /// Policy the port was allocated under.
    pub policy: PortPolicy,
}

impl Allocation {
    /// Whether this allocation is a valid answer to `req` (used to make `allocate` idempotent,
    /// also for servers rebuilt by `restore`, which have no stored request).
    pub fn satisfies(&self, req: &PortRequest) -> bool {
        let same = self.name == req.name
            && self.container == req.container
            && self.protocol == req.protocol
            && self.policy == req.policy;
        same && match req.policy {
            PortPolicy::Dynamic | PortPolicy::None => req.container_port == Some(self.container_port),
            PortPolicy::Static => {
                req.host_port == self.host_port && req.container_port.or(req.host_port) == Some(self.container_port)
            }
            PortPolicy::Passthrough => true,
        }
    }
}

/// Facts about a valid request list that `allocate` needs.
pub(super) struct Checked {
    /// Static host ports.
    pub statics: Vec<u16>,
    /// Ports a picked port must avoid: static host ports and explicit container ports, so that a
    /// Passthrough port never lands on a number another port of the server already uses.
    pub avoid: Vec<u16>,
    /// How many ports must be picked from the ranges.
    pub picks: usize,
}

fn invalid(server: &str, port: &str, reason: impl Into<String>) -> AllocError {
    AllocError::Invalid { server: server.to_owned(), port: port.to_owned(), reason: reason.into() }
}

/// One port as the duplicate checks see it.
struct Entry<'a> {
    name: &'a str,
    container: &'a str,
    container_port: Option<u16>,
    protocol: PortProtocol,
}

/// Checks names (unique, also as env vars) and that no two ports of the server share a
/// container port on an overlapping protocol. Pairwise on purpose: servers have a handful of
/// ports, and this runs for every server on a rebuild, so it must not allocate.
fn check_entries<'a, T>(server: &str, items: &'a [T], entry: impl Fn(&'a T) -> Entry<'a>) -> Result<(), AllocError> {
    for (i, item) in items.iter().enumerate() {
        let e = entry(item);
        let name = e.name;
        if name.is_empty() {
            return Err(invalid(server, name, "the port name is empty; give every port a name"));
        }
        if e.container.is_empty() {
            return Err(invalid(server, name, "the container is empty; name the container that listens"));
        }
        if e.container_port == Some(0) {
            return Err(invalid(server, name, "containerPort 0 is not a port; use 1-65535"));
        }
        for other in items[..i].iter().map(&entry) {
            if other.name == name {
                return Err(invalid(server, name, "the port name is used twice; port names must be unique"));
            }
            if same_env_name(other.name, name) {
                return Err(invalid(
                    server,
                    name,
                    format!(
                        "its env var {} is the same as port {:?}'s; rename one of them",
                        port_env_name(name),
                        other.name
                    ),
                ));
            }
            // Pod-wide, not per container: all containers of a pod share one network namespace.
            if let Some(cp) = e.container_port
                && other.container_port == Some(cp)
                && other.protocol.overlaps(e.protocol)
            {
                return Err(invalid(
                    server,
                    name,
                    format!(
                        "containerPort {cp} is already used by port {:?} (container {:?}); containers of one \
                         pod share its network, so pick another containerPort or protocol",
                        other.name, other.container
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Validates a request list before anything is allocated.
pub(super) fn check_requests(server: &str, requests: &[PortRequest]) -> Result<Checked, AllocError> {
    let mut checked = Checked { statics: Vec::new(), avoid: Vec::new(), picks: 0 };
    for r in requests {
        let name = r.name.as_str();
        match r.policy {
            PortPolicy::Dynamic | PortPolicy::None => {
                if r.container_port.is_none() {
                    return Err(invalid(server, name, format!("portPolicy {} needs a containerPort", r.policy)));
                }
                if r.host_port.is_some() {
                    return Err(invalid(
                        server,
                        name,
                        format!("portPolicy {} takes no hostPort; use portPolicy Static to fix it", r.policy),
                    ));
                }
            }
            PortPolicy::Static => match r.host_port {
                None | Some(0) => {
                    return Err(invalid(server, name, "portPolicy Static needs a hostPort in 1-65535"));
                }
                Some(p) if checked.statics.contains(&p) => {
                    return Err(invalid(
                        server,
                        name,
                        format!(
                            "hostPort {p} is used by another port of this server; to serve TCP and UDP on \
                             it, use one port with protocol TCPUDP"
                        ),
                    ));
                }
                Some(p) => checked.statics.push(p),
            },
            PortPolicy::Passthrough => {
                if r.container_port.is_some() || r.host_port.is_some() {
                    return Err(invalid(
                        server,
                        name,
                        "portPolicy Passthrough picks the port itself; leave containerPort and hostPort empty",
                    ));
                }
            }
        }
        if r.policy.picks_from_range() {
            checked.picks += 1;
        }
    }
    check_entries(server, requests, |r| Entry {
        name: &r.name,
        container: &r.container,
        container_port: r.container_port.or(r.host_port),
        protocol: r.protocol,
    })?;
    checked.avoid.extend(&checked.statics);
    checked.avoid.extend(requests.iter().filter_map(|r| r.container_port));
    Ok(checked)
}

/// Validates allocations handed to `restore` and returns their host ports.
pub(super) fn check_allocations(server: &str, allocations: &[Allocation]) -> Result<Vec<u16>, AllocError> {
    let mut host_ports = Vec::new();
    for a in allocations {
        let name = a.name.as_str();
        match (a.policy, a.host_port) {
            (PortPolicy::None, Some(_)) => {
                return Err(invalid(server, name, "portPolicy None can't hold a hostPort"));
            }
            (PortPolicy::None, None) => {}
            (_, None | Some(0)) => {
                return Err(invalid(server, name, format!("portPolicy {} needs a hostPort", a.policy)));
            }
            (policy, Some(hp)) => {
                if policy == PortPolicy::Passthrough && a.container_port != hp {
                    return Err(invalid(server, name, "portPolicy Passthrough needs containerPort == hostPort"));
                }
                if host_ports.contains(&hp) {
                    return Err(invalid(server, name, format!("hostPort {hp} is used by another port of this server")));
                }
                host_ports.push(hp);
            }
        }
    }
    check_entries(server, allocations, |a| Entry {
        name: &a.name,
        container: &a.container,
        container_port: Some(a.container_port),
        protocol: a.protocol,
    })?;
    Ok(host_ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(server: &str, reqs: &[PortRequest]) -> String {
        match check_requests(server, reqs) {
            Err(e @ AllocError::Invalid { .. }) => e.to_string(),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("request list was accepted"),
        }
    }

    #[test]
    fn rejects_inconsistent_requests_with_the_port_named() {
        let mut bad = PortRequest::dynamic("game", "server", 7777, PortProtocol::Udp);
        bad.container_port = None;
        assert!(reason("ns/gs", &[bad]).contains("port \"game\": portPolicy Dynamic needs a containerPort"));

        let mut bad = PortRequest::passthrough("game", "server", PortProtocol::Udp);
        bad.container_port = Some(7777);
        assert!(reason("ns/gs", &[bad]).contains("leave containerPort and hostPort empty"));

        let mut bad = PortRequest::static_port("game", "server", 7777, PortProtocol::Udp);
        bad.host_port = None;
        assert!(reason("ns/gs", &[bad]).contains("needs a hostPort"));

        let mut bad = PortRequest::no_host_port("game", "server", 7777, PortProtocol::Udp);
        bad.host_port = Some(7000);
        assert!(reason("ns/gs", &[bad]).contains("use portPolicy Static"));
    }

    #[test]
    fn rejects_duplicate_names_env_vars_and_ports() {
        let a = PortRequest::dynamic("game", "server", 7777, PortProtocol::Udp);
        let b = PortRequest::dynamic("game", "sidecar", 8080, PortProtocol::Tcp);
        assert!(reason("s", &[a.clone(), b]).contains("used twice"));

        let b = PortRequest::dynamic("GAME", "sidecar", 8080, PortProtocol::Tcp);
        assert!(reason("s", &[a.clone(), b]).contains("GAMEZONE_PORT_GAME"));

        // Same container port, TCP vs TCPUDP overlap, even across containers (one pod network);
        // TCP and UDP on one number are fine.
        let a = PortRequest::dynamic("a", "server", 7777, PortProtocol::TcpUdp);
        let b = PortRequest::dynamic("b", "sidecar", 7777, PortProtocol::Tcp);
        assert!(reason("s", &[a, b]).contains("containerPort 7777 is already used by port \"a\""));
        let c = PortRequest::dynamic("c", "sidecar", 7777, PortProtocol::Tcp);
        let d = PortRequest::dynamic("d", "server", 7777, PortProtocol::Udp);
        assert!(check_requests("s", &[c, d]).is_ok());

        let a = PortRequest::static_port("a", "server", 7000, PortProtocol::Tcp);
        let b = PortRequest::static_port("b", "sidecar", 7000, PortProtocol::Udp);
        assert!(reason("s", &[a, b]).contains("hostPort 7000 is used by another port"));
    }

    #[test]
    fn satisfies_matches_the_request_it_came_from() {
        let req = PortRequest::static_port("q", "server", 7000, PortProtocol::Tcp);
        let a = Allocation {
            name: "q".into(),
            container: "server".into(),
            container_port: 7000,
            host_port: Some(7000),
            protocol: PortProtocol::Tcp,
            policy: PortPolicy::Static,
        };
        assert!(a.satisfies(&req));
        assert!(!a.satisfies(&PortRequest::static_port("q", "server", 7001, PortProtocol::Tcp)));
        assert!(!a.satisfies(&PortRequest::static_port("q", "server", 7000, PortProtocol::Udp)));
    }

    #[test]
    fn serde_uses_kubernetes_spelling() {
        let req: PortRequest = serde_json::from_str(
            r#"{"name":"game","container":"server","containerPort":7777,"protocol":"TCPUDP","policy":"Passthrough"}"#,
        )
        .unwrap();
        assert_eq!(req.protocol, PortProtocol::TcpUdp);
        assert_eq!(req.policy, PortPolicy::Passthrough);
        let d: PortRequest = serde_json::from_str(r#"{"name":"g","container":"c","containerPort":1}"#).unwrap();
        // One default with the API's: a port without a protocol or policy is TCP with no host port.
        assert_eq!((d.protocol, d.policy), (PortProtocol::Tcp, PortPolicy::None));
        assert_eq!(serde_json::to_string(&PortPolicy::None).unwrap(), r#""None""#);
    }
}
