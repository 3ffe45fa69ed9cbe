//! Which sockets to open: the announced ports, matched with the topology's view of them.
//!
//! `GAMEZONE_PORT_<NAME>` is the port clients connect to — the host port for Dynamic and Static
//! policies — while the process must listen on the container port. The topology lists both, and
//! the protocol, so the server listens where the pod's `containerPort` is, with the protocols the
//! zone asked for. Without a topology entry (a local run), it listens on the announced number,
//! TCP and UDP.

use crate::topology::Instance;

/// The container the operator names the game process's.
pub const SERVER_CONTAINER: &str = "server";

/// One port to listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// Port name (lower-case, as in the zone spec).
    pub name: String,
    /// Port number to bind.
    pub port: u16,
    /// Open a TCP listener.
    pub tcp: bool,
    /// Open a UDP socket.
    pub udp: bool,
}

/// The sockets to open for `announced` ports (env suffix, number) given this instance's topology
/// entry, and a note for each port handled differently from what its env var alone says.
pub fn plan(announced: &[(String, u16)], own: Option<&Instance>) -> (Vec<Listen>, Vec<String>) {
    let mut out: Vec<Listen> = Vec::new();
    let mut notes = Vec::new();
    for (suffix, number) in announced {
        let listen = match own.and_then(|i| i.port_by_env_suffix(suffix)) {
            Some(p) if !p.container.is_empty() && p.container != SERVER_CONTAINER => {
                notes.push(format!("port {} belongs to container {}; not listening on it", p.name, p.container));
                continue;
            }
            Some(p) => {
                let port = if p.container_port != 0 { p.container_port } else { *number };
                if port != *number {
                    notes.push(format!(
                        "port {}: clients connect to {number}, listening on container port {port}",
                        p.name
                    ));
                }
                Listen { name: p.name.clone(), port, tcp: p.protocol.tcp(), udp: p.protocol.udp() }
            }
            None => {
                let name = suffix.to_ascii_lowercase();
                if own.is_some() {
                    notes.push(format!("port {name} is not in the topology; listening on {number}, TCP and UDP"));
                }
                Listen { name, port: *number, tcp: true, udp: true }
            }
        };
        // Two names on one number would fail to bind twice; serve both protocols once.
        if let Some(same) = out.iter_mut().find(|l| l.port == listen.port) {
            notes.push(format!("ports {} and {} share {}; serving them once", same.name, listen.name, listen.port));
            same.tcp |= listen.tcp;
            same.udp |= listen.udp;
        } else {
            out.push(listen);
        }
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Port, Protocol};

    fn port(name: &str, port: u16, container_port: u16, protocol: Protocol, container: &str) -> Port {
        Port {
            name: name.into(),
            port,
            container_port,
            host_port: (port != container_port).then_some(port),
            protocol,
            container: container.into(),
            policy: String::new(),
        }
    }

    fn instance(ports: Vec<Port>) -> Instance {
        Instance { name: "z-game-1".into(), type_: "game".into(), id: 1, dns: "d".into(), ports }
    }

    fn ann(pairs: &[(&str, u16)]) -> Vec<(String, u16)> {
        pairs.iter().map(|(s, p)| (s.to_string(), *p)).collect()
    }

    #[test]
    fn listens_on_the_container_port_with_the_zones_protocols() {
        let me = instance(vec![
            port("game", 7001, 7777, Protocol::Tcpudp, "server"),
            port("admin", 8080, 8080, Protocol::Tcp, ""),
            port("voice", 9000, 9000, Protocol::Udp, "server"),
        ]);
        let (plan, notes) = plan(&ann(&[("ADMIN", 8080), ("GAME", 7001), ("VOICE", 9000)]), Some(&me));
        assert_eq!(
            plan,
            vec![
                Listen { name: "admin".into(), port: 8080, tcp: true, udp: false },
                Listen { name: "game".into(), port: 7777, tcp: true, udp: true },
                Listen { name: "voice".into(), port: 9000, tcp: false, udp: true },
            ]
        );
        assert_eq!(notes, ["port game: clients connect to 7001, listening on container port 7777"]);
    }

    #[test]
    fn without_topology_listens_on_the_announced_number_both_protocols() {
        let (plan, notes) = plan(&ann(&[("GAME_UDP", 7000)]), None);
        assert_eq!(plan, vec![Listen { name: "game_udp".into(), port: 7000, tcp: true, udp: true }]);
        assert!(notes.is_empty());
    }

    #[test]
    fn a_sidecars_port_is_left_to_the_sidecar() {
        let me = instance(vec![port("sdk", 9357, 9357, Protocol::Tcp, "sdk")]);
        let (plan, notes) = plan(&ann(&[("SDK", 9357)]), Some(&me));
        assert!(plan.is_empty());
        assert!(notes[0].contains("belongs to container sdk"), "{notes:?}");
    }

    #[test]
    fn a_port_missing_from_the_topology_is_served_and_noted() {
        let me = instance(vec![]);
        let (plan, notes) = plan(&ann(&[("GAME", 7000)]), Some(&me));
        assert_eq!(plan.len(), 1);
        assert!(notes[0].contains("not in the topology"), "{notes:?}");
    }

    #[test]
    fn two_names_on_one_number_are_served_once() {
        let me = instance(vec![port("a", 7000, 7000, Protocol::Tcp, ""), port("b", 7000, 7000, Protocol::Udp, "")]);
        let (plan, notes) = plan(&ann(&[("A", 7000), ("B", 7000)]), Some(&me));
        assert_eq!(plan, vec![Listen { name: "a".into(), port: 7000, tcp: true, udp: true }]);
        assert_eq!(notes.len(), 1);
    }
}
