//! Who this process is and where its inputs are, from the pod's env and args.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Prefix of the env vars that announce the allocated ports (`GAMEZONE_PORT_<NAME>`).
pub const PORT_ENV_PREFIX: &str = "GAMEZONE_PORT_";
/// Where the operator mounts the topology document.
pub const DEFAULT_TOPOLOGY: &str = "/etc/gamezone/topology.json";
/// Where a zone's artifacts are mounted when its layers live under `/app/artifacts`.
pub const DEFAULT_ARTIFACTS: &str = "/app/artifacts";
/// The config file read from the artifacts tree, relative to the tree.
pub const DEFAULT_CONFIG: &str = "config/server.json";

const USAGE: &str = "usage: game-server [--artifacts DIR] [--state FILE] [--config PATH] <type> <id> [args…]";

/// The instance this process serves as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// Zone name (`GAMEZONE_ZONE`).
    pub zone: String,
    /// Numeric zone id (`GAMEZONE_ZONE_ID`).
    pub zone_id: i64,
    /// Service type (`GAMEZONE_TYPE` or the first argument).
    #[serde(rename = "type")]
    pub type_: String,
    /// Instance id (`GAMEZONE_ID` or the second argument).
    pub id: i64,
    /// Instance name (`GAMEZONE_INSTANCE`, else `<zone>-<type>-<id>` as the operator names it).
    pub instance: String,
    /// The pod's IP (`GAMEZONE_POD_IP`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
}

/// Everything the server needs to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Who we are.
    pub identity: Identity,
    /// Arguments after `<type> <id>` (the service's `args` in the zone).
    pub extra_args: Vec<String>,
    /// Path of the topology document.
    pub topology: PathBuf,
    /// The artifacts directory: gamezone-init's volume root (with `current`) or the tree itself.
    pub artifacts: PathBuf,
    /// gamezone-init's state file, when given explicitly.
    pub state: Option<PathBuf>,
    /// The config file: relative to the artifacts tree, or absolute.
    pub config: String,
    /// Announced ports: env var suffix (`GAME` for `GAMEZONE_PORT_GAME`) and number.
    pub ports: Vec<(String, u16)>,
    /// The SDK sidecar's REST port on loopback (`GAMEZONE_SDK_HTTP_PORT`), when the pod has one.
    pub sdk_http_port: Option<u16>,
    /// Where the server serves its Prometheus metrics: `GAME_METRICS_ADDR` (`off`: nowhere), else
    /// every address on the port its zone declares (`GAMEZONE_METRICS_PORT`, set by the operator
    /// from the service type's `metrics`), else nowhere.
    pub metrics: Option<std::net::SocketAddr>,
}

impl Settings {
    /// Reads settings from the environment and the process arguments (without the program name).
    /// Flags win over env vars. For `<type> <id>` the env and the arguments must agree when both
    /// are given: the operator sets both from the same spec, so a difference is a hand edit.
    pub fn parse(env: &BTreeMap<String, String>, args: &[String]) -> Result<Settings> {
        const FLAGS: [&str; 3] = ["--artifacts", "--state", "--config"];
        let mut flags: BTreeMap<String, String> = BTreeMap::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if let Some((flag, value)) = arg.split_once('=')
                && FLAGS.contains(&flag)
            {
                flags.insert(flag.to_owned(), value.to_owned());
            } else if FLAGS.contains(&arg.as_str()) {
                let value = it.next().with_context(|| format!("{arg} needs a value; {USAGE}"))?;
                flags.insert(arg.clone(), value.clone());
            } else {
                positional.push(arg.clone());
            }
        }
        let mut positional = positional.into_iter();
        let arg_type = positional.next();
        let arg_id = positional.next();
        let extra_args = positional.collect();

        let type_ = agree("GAMEZONE_TYPE", env.get("GAMEZONE_TYPE"), "first", arg_type.as_ref(), |s| {
            if s.is_empty() { bail!("is empty") } else { Ok(s.to_owned()) }
        })?;
        let id = agree("GAMEZONE_ID", env.get("GAMEZONE_ID"), "second", arg_id.as_ref(), |s| {
            s.parse::<i64>().map_err(|_| anyhow::anyhow!("`{s}` is not an integer"))
        })?;
        let zone = required(env, "GAMEZONE_ZONE")?;
        let zone_id = required(env, "GAMEZONE_ZONE_ID")?
            .parse::<i64>()
            .map_err(|_| anyhow::anyhow!("GAMEZONE_ZONE_ID must be an integer (the zone's spec.zoneId)"))?;
        let instance = non_empty(env, "GAMEZONE_INSTANCE").unwrap_or_else(|| format!("{zone}-{type_}-{id}"));
        let identity = Identity { zone, zone_id, type_, id, instance, pod_ip: non_empty(env, "GAMEZONE_POD_IP") };

        let mut ports = Vec::new();
        for (key, value) in env.range(PORT_ENV_PREFIX.to_owned()..) {
            let Some(suffix) = key.strip_prefix(PORT_ENV_PREFIX) else { break };
            let port = value.trim().parse::<u16>().ok().filter(|p| *p != 0).with_context(|| {
                format!("{key}={value:?} is not a port number (1-65535); it should be set by the operator")
            })?;
            ports.push((suffix.to_owned(), port));
        }

        let sdk_http_port = non_empty(env, "GAMEZONE_SDK_HTTP_PORT")
            .map(|v| {
                v.trim().parse::<u16>().ok().filter(|p| *p != 0).with_context(|| {
                    format!(
                        "GAMEZONE_SDK_HTTP_PORT={v:?} is not a port number (1-65535); it should be set by the operator"
                    )
                })
            })
            .transpose()?;

        let metrics = match (non_empty(env, "GAME_METRICS_ADDR"), non_empty(env, "GAMEZONE_METRICS_PORT")) {
            (Some(addr), _) if addr.trim() == "off" => None,
            (Some(addr), _) => {
                Some(addr.trim().parse().with_context(|| format!("GAME_METRICS_ADDR={addr:?} is not IP:PORT or off"))?)
            }
            (None, Some(port)) => {
                let port = port.trim().parse::<u16>().ok().filter(|p| *p != 0).with_context(|| {
                    format!("GAMEZONE_METRICS_PORT={port:?} is not a port number (1-65535); it should be set by the operator")
                })?;
                Some(std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)))
            }
            (None, None) => None,
        };

        let pick = |flag: &str, var: &str| flags.get(flag).cloned().or_else(|| non_empty(env, var));
        Ok(Settings {
            identity,
            extra_args,
            topology: non_empty(env, "GAMEZONE_TOPOLOGY").unwrap_or_else(|| DEFAULT_TOPOLOGY.into()).into(),
            artifacts: pick("--artifacts", "GAMEZONE_ARTIFACTS_DIR").unwrap_or_else(|| DEFAULT_ARTIFACTS.into()).into(),
            state: pick("--state", "GAMEZONE_ARTIFACTS_STATE").map(PathBuf::from),
            config: pick("--config", "GAMEZONE_CONFIG").unwrap_or_else(|| DEFAULT_CONFIG.into()),
            ports,
            sdk_http_port,
            metrics,
        })
    }
}

/// One value given by an env var and/or a positional argument; both must agree.
fn agree<T: PartialEq + std::fmt::Display>(
    var: &str,
    from_env: Option<&String>,
    position: &str,
    from_arg: Option<&String>,
    parse: impl Fn(&str) -> Result<T>,
) -> Result<T> {
    let env_value = from_env.filter(|s| !s.is_empty()).map(|s| parse(s).with_context(|| var.to_owned())).transpose()?;
    let arg_value =
        from_arg.map(|s| parse(s).with_context(|| format!("the {position} argument; {USAGE}"))).transpose()?;
    match (env_value, arg_value) {
        (Some(e), Some(a)) if e != a => bail!(
            "{var}={e} but the {position} argument is {a}; the operator sets both from the same service, \
             so make them agree (or drop one)"
        ),
        (Some(v), _) | (None, Some(v)) => Ok(v),
        (None, None) => bail!("{var} is not set and there is no {position} argument; {USAGE}"),
    }
}

fn non_empty(env: &BTreeMap<String, String>, var: &str) -> Option<String> {
    env.get(var).filter(|v| !v.is_empty()).cloned()
}

fn required(env: &BTreeMap<String, String>, var: &str) -> Result<String> {
    non_empty(env, var).with_context(|| format!("{var} is not set; the operator sets it in every server pod"))
}

/// The `GAMEZONE_PORT_*` suffix of a port name, as the operator forms it: upper-cased, every
/// character that is not an ASCII letter or digit replaced by `_` (`game-udp` → `GAME_UDP`).
pub fn port_env_suffix(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    const BASE: &[(&str, &str)] = &[("GAMEZONE_ZONE", "zone1"), ("GAMEZONE_ZONE_ID", "101")];

    #[test]
    fn pod_env_and_args_give_identity_ports_and_defaults() {
        let mut e = env(BASE);
        e.extend(env(&[
            ("GAMEZONE_TYPE", "game"),
            ("GAMEZONE_ID", "3"),
            ("GAMEZONE_INSTANCE", "zone1-game-3"),
            ("GAMEZONE_POD_IP", "10.244.0.7"),
            ("GAMEZONE_PORT_GAME", "7777"),
            ("GAMEZONE_PORT_GAME_UDP", "7778"),
            ("GAMEZONE_TOPOLOGYX", "ignored"),
        ]));
        let s = Settings::parse(&e, &args(&["game", "3", "--verbose"])).unwrap();
        assert_eq!(
            s.identity,
            Identity {
                zone: "zone1".into(),
                zone_id: 101,
                type_: "game".into(),
                id: 3,
                instance: "zone1-game-3".into(),
                pod_ip: Some("10.244.0.7".into()),
            }
        );
        assert_eq!(s.ports, vec![("GAME".into(), 7777), ("GAME_UDP".into(), 7778)]);
        assert_eq!(s.extra_args, vec!["--verbose".to_string()]);
        assert_eq!(s.topology, PathBuf::from(DEFAULT_TOPOLOGY));
        assert_eq!(s.artifacts, PathBuf::from(DEFAULT_ARTIFACTS));
        assert_eq!(s.config, DEFAULT_CONFIG);
        assert_eq!(s.state, None);
        assert_eq!(s.metrics, None, "no metrics unless asked");
    }

    #[test]
    fn the_metrics_address_is_set_or_turned_off_and_a_bad_one_is_named() {
        let with = |addr: &str| {
            let mut e = env(BASE);
            e.insert("GAME_METRICS_ADDR".into(), addr.into());
            Settings::parse(&e, &args(&["game", "1"]))
        };
        assert_eq!(with("127.0.0.1:9200").unwrap().metrics, Some("127.0.0.1:9200".parse().unwrap()));
        let mut declared = env(BASE);
        declared.insert("GAMEZONE_METRICS_PORT".into(), "9100".into());
        let s = Settings::parse(&declared, &args(&["game", "1"])).unwrap();
        assert_eq!(s.metrics, Some("0.0.0.0:9100".parse().unwrap()), "the zone's port");
        assert_eq!(with("off").unwrap().metrics, None);
        let err = format!("{:#}", with("9200").unwrap_err());
        assert!(err.contains("GAME_METRICS_ADDR=\"9200\" is not IP:PORT or off"), "{err}");
    }

    #[test]
    fn args_alone_name_the_instance_like_the_operator() {
        let s = Settings::parse(&env(BASE), &args(&["gateway", "2"])).unwrap();
        assert_eq!((s.identity.type_.as_str(), s.identity.id), ("gateway", 2));
        assert_eq!(s.identity.instance, "zone1-gateway-2");
    }

    #[test]
    fn env_alone_is_enough() {
        let mut e = env(BASE);
        e.extend(env(&[("GAMEZONE_TYPE", "db"), ("GAMEZONE_ID", "1")]));
        let s = Settings::parse(&e, &[]).unwrap();
        assert_eq!(s.identity.instance, "zone1-db-1");
    }

    #[test]
    fn env_and_args_that_disagree_are_refused_naming_both() {
        let mut e = env(BASE);
        e.extend(env(&[("GAMEZONE_TYPE", "game"), ("GAMEZONE_ID", "1")]));
        let err = Settings::parse(&e, &args(&["gateway", "1"])).unwrap_err().to_string();
        assert!(err.contains("GAMEZONE_TYPE=game") && err.contains("gateway"), "{err}");
        let err = Settings::parse(&e, &args(&["game", "2"])).unwrap_err().to_string();
        assert!(err.contains("GAMEZONE_ID=1") && err.contains("second argument is 2"), "{err}");
        // The same number spelled differently agrees.
        assert!(Settings::parse(&e, &args(&["game", "01"])).is_ok());
    }

    #[test]
    fn missing_or_bad_inputs_name_the_variable() {
        let err = format!("{:#}", Settings::parse(&env(BASE), &[]).unwrap_err());
        assert!(err.contains("GAMEZONE_TYPE is not set"), "{err}");
        let err = format!("{:#}", Settings::parse(&env(&[]), &args(&["game", "1"])).unwrap_err());
        assert!(err.contains("GAMEZONE_ZONE is not set"), "{err}");
        let err = format!("{:#}", Settings::parse(&env(BASE), &args(&["game", "one"])).unwrap_err());
        assert!(err.contains("`one` is not an integer"), "{err}");
        let mut e = env(BASE);
        e.insert("GAMEZONE_PORT_GAME".into(), "70000".into());
        let err = format!("{:#}", Settings::parse(&e, &args(&["game", "1"])).unwrap_err());
        assert!(err.contains("GAMEZONE_PORT_GAME=\"70000\""), "{err}");
    }

    #[test]
    fn flags_win_over_env() {
        let mut e = env(BASE);
        e.extend(env(&[
            ("GAMEZONE_ARTIFACTS_DIR", "/env/art"),
            ("GAMEZONE_CONFIG", "config/game.ini"),
            ("GAMEZONE_ARTIFACTS_STATE", "/env/state.json"),
        ]));
        let s = Settings::parse(&e, &args(&["--artifacts", "/flag/art", "game", "1", "--config=x.json"])).unwrap();
        assert_eq!(s.artifacts, PathBuf::from("/flag/art"));
        assert_eq!(s.config, "x.json");
        assert_eq!(s.state, Some(PathBuf::from("/env/state.json")));
        assert!(s.extra_args.is_empty());
        let err = Settings::parse(&e, &args(&["game", "1", "--state"])).unwrap_err().to_string();
        assert!(err.contains("--state needs a value"), "{err}");
    }

    #[test]
    fn port_env_suffix_matches_the_operator() {
        assert_eq!(port_env_suffix("game"), "GAME");
        assert_eq!(port_env_suffix("game-udp"), "GAME_UDP");
        assert_eq!(port_env_suffix("p2p.x"), "P2P_X");
    }
}
