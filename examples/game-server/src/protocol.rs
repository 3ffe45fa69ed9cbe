//! The wire protocol: one request per line (TCP) or datagram (UDP), one JSON line back.

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `hello`: who this server is, its artifacts and config.
    Hello,
    /// `peers`: the other instances of the zone, from the topology.
    Peers,
    /// `ping PEER [PORT]`: connect to a peer's TCP port and relay its hello.
    Ping {
        /// Instance name of the peer.
        peer: String,
        /// Port name; the peer's first TCP port when absent.
        port: Option<String>,
    },
    /// `stats`: how many requests of each kind this server has answered (itself not counted).
    Stats,
}

/// Parses one request; surrounding whitespace (the line's `\n`, a `\r`) is ignored.
pub fn parse(text: &str) -> Result<Request, String> {
    let mut words = text.split_whitespace();
    let request = match words.next() {
        Some("hello") => Request::Hello,
        Some("peers") => Request::Peers,
        Some("stats") => Request::Stats,
        Some("ping") => {
            let peer = words.next().ok_or("ping needs a peer: `ping PEER [PORT]`")?;
            Request::Ping { peer: peer.to_owned(), port: words.next().map(str::to_owned) }
        }
        _ => {
            return Err(format!(
                "unknown request {:?}; send `hello`, `peers`, `ping PEER [PORT]` or `stats`",
                text.trim()
            ));
        }
    };
    if words.next().is_some() {
        return Err(format!(
            "too many words in {:?}; send `hello`, `peers`, `ping PEER [PORT]` or `stats`",
            text.trim()
        ));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_line_endings() {
        assert_eq!(parse("hello\n"), Ok(Request::Hello));
        assert_eq!(parse("hello\r\n"), Ok(Request::Hello));
        assert_eq!(parse(" peers "), Ok(Request::Peers));
        assert_eq!(parse("stats\n"), Ok(Request::Stats));
        assert_eq!(parse("ping z-game-2"), Ok(Request::Ping { peer: "z-game-2".into(), port: None }));
        assert_eq!(
            parse("ping z-game-2 admin\n"),
            Ok(Request::Ping { peer: "z-game-2".into(), port: Some("admin".into()) })
        );
    }

    #[test]
    fn bad_requests_say_what_is_accepted() {
        assert!(parse("HELLO").unwrap_err().contains("send `hello`"));
        assert!(parse("").unwrap_err().contains("unknown request"));
        assert!(parse("ping").unwrap_err().contains("needs a peer"));
        assert!(parse("hello there").unwrap_err().contains("too many words"));
        assert!(parse("ping a b c").unwrap_err().contains("too many words"));
    }
}
