//! The parts of git's wire protocol v2 a partial fetch needs: pkt-lines, the capability
//! advertisement, `fetch` requests and responses with side-band demultiplexing. No I/O of its
//! own: everything reads from a `Read` and writes the pack to a `Write`.

use std::io::{self, Read, Write};

/// Largest pkt-line, length header included.
pub(crate) const MAX_PKT: usize = 65520;

/// What went wrong while talking to the server. The texts quote the server and are for tests
/// and debugging only: `partial::fault` maps each kind to a fixed phrase.
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) enum Fault {
    /// The connection failed or ended early.
    Io(io::Error),
    /// The server sent something this client does not understand.
    Protocol(String),
    /// The server reported an error (`ERR` line or side-band channel 3).
    Remote(String),
    /// The received pack could not be stored.
    Store(String),
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Self {
        Fault::Io(e)
    }
}

/// One pkt-line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pkt<'a> {
    /// `0000`: end of a message.
    Flush,
    /// `0001`: separates the sections of a message.
    Delim,
    /// `0002`: end of a response in stateless connections.
    End,
    /// A data line (its length header removed).
    Data(&'a [u8]),
}

/// Reads pkt-lines from a byte stream, one buffer of at most [`MAX_PKT`] bytes.
pub(crate) struct PktReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> PktReader<R> {
    pub fn new(inner: R) -> Self {
        PktReader { inner, buf: vec![0; MAX_PKT] }
    }

    /// The next pkt-line; an `ERR` line becomes [`Fault::Remote`], an early end [`Fault::Io`].
    pub fn read(&mut self) -> Result<Pkt<'_>, Fault> {
        let mut head = [0u8; 4];
        self.inner.read_exact(&mut head).map_err(|e| eof_as("the server closed the connection", e))?;
        let len = std::str::from_utf8(&head)
            .ok()
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                Fault::Protocol(format!("malformed pkt-line length {:?}", String::from_utf8_lossy(&head)))
            })?;
        match len {
            0 => return Ok(Pkt::Flush),
            1 => return Ok(Pkt::Delim),
            2 => return Ok(Pkt::End),
            3 => return Err(Fault::Protocol("pkt-line of length 3".into())),
            l if l > MAX_PKT => return Err(Fault::Protocol(format!("pkt-line of length {l} is over the limit"))),
            _ => {}
        }
        let data = &mut self.buf[..len - 4];
        self.inner.read_exact(data).map_err(|e| eof_as("the server closed the connection mid-line", e))?;
        if let Some(msg) = data.strip_prefix(b"ERR ") {
            return Err(Fault::Remote(text(msg)));
        }
        Ok(Pkt::Data(data))
    }

    /// The next data line as text without its trailing LF; `None` for a flush, delim or end.
    pub fn read_line(&mut self) -> Result<Option<String>, Fault> {
        match self.read()? {
            Pkt::Data(d) => Ok(Some(text(d))),
            _ => Ok(None),
        }
    }
}

fn eof_as(what: &str, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof { io::Error::new(io::ErrorKind::UnexpectedEof, what) } else { e }
}

fn text(d: &[u8]) -> String {
    String::from_utf8_lossy(d).trim_end_matches('\n').to_owned()
}

/// Appends one data pkt-line holding `line`.
pub(crate) fn pkt_line(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
    out.extend_from_slice(line);
}

/// A protocol v2 capability advertisement.
#[derive(Debug, Default, Clone)]
pub(crate) struct Capabilities {
    caps: Vec<(String, Option<String>)>,
}

impl Capabilities {
    /// The value of `key` (`Some("")` when advertised without a value).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.caps.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// True when the `fetch` command is advertised with `feature` (e.g. `filter`, `shallow`).
    pub fn fetch_has(&self, feature: &str) -> bool {
        self.get("fetch").is_some_and(|v| v.split(' ').any(|f| f == feature))
    }

    /// Why a depth-1 fetch (with `filter` when asked) is not possible with this server, if it is not.
    pub fn partial_fetch_refused(&self, filter: bool) -> Option<String> {
        if self.get("fetch").is_none() {
            return Some("the server does not offer the v2 `fetch` command".into());
        }
        if !self.fetch_has("shallow") {
            return Some("the server does not offer shallow fetches".into());
        }
        if filter && !self.fetch_has("filter") {
            return Some("the server does not allow filters (uploadpack.allowFilter is off)".into());
        }
        match self.get("object-format") {
            None | Some("sha1") => None,
            Some(f) => Some(format!("the repository uses object format `{f}`, the cache only sha1")),
        }
    }
}

/// What the first lines of an upload-pack response say about the protocol.
#[derive(Debug)]
pub(crate) enum Advertisement {
    /// Protocol v2 with these capabilities.
    V2(Capabilities),
    /// An older protocol (a ref advertisement or `version 1`), not read further.
    Older,
}

/// Reads a capability advertisement; a smart-HTTP `# service=` header (sent by some servers
/// even for v2) is skipped.
pub(crate) fn read_advertisement<R: Read>(r: &mut PktReader<R>) -> Result<Advertisement, Fault> {
    let mut first = r.read_line()?;
    if first.as_deref().is_some_and(|l| l.starts_with("# service=")) {
        // The header is followed by a flush; then the advertisement proper.
        while r.read_line()?.is_some() {}
        first = r.read_line()?;
    }
    match first.as_deref() {
        Some("version 2") => {}
        Some(_) => return Ok(Advertisement::Older),
        None => return Err(Fault::Protocol("empty capability advertisement".into())),
    }
    let mut caps = Capabilities::default();
    loop {
        match r.read()? {
            Pkt::Flush => break,
            Pkt::Data(d) => {
                let line = text(d);
                let (k, v) = match line.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (line, None),
                };
                caps.caps.push((k, v));
            }
            p => return Err(Fault::Protocol(format!("unexpected {p:?} in the capability advertisement"))),
        }
    }
    Ok(Advertisement::V2(caps))
}

/// A v2 `fetch` command that sends `done` at once (no negotiation: the cache has nothing to offer).
#[derive(Debug, Default)]
pub(crate) struct FetchRequest {
    /// Object ids (40 hex) to fetch: commits, or blobs for the second pass.
    pub wants: Vec<String>,
    /// `deepen N`: commits only N deep.
    pub deepen: Option<u32>,
    /// `filter SPEC`, e.g. `blob:none`.
    pub filter: Option<String>,
}

impl FetchRequest {
    /// The request bytes for a server with `caps`.
    pub fn encode(&self, caps: &Capabilities) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.wants.len() * 46);
        pkt_line(&mut out, b"command=fetch\n");
        if caps.get("agent").is_some() {
            pkt_line(&mut out, concat!("agent=gamezone-init/", env!("CARGO_PKG_VERSION"), "\n").as_bytes());
        }
        if caps.get("object-format").is_some() {
            pkt_line(&mut out, b"object-format=sha1\n");
        }
        out.extend_from_slice(b"0001");
        pkt_line(&mut out, b"ofs-delta\n");
        pkt_line(&mut out, b"no-progress\n");
        if let Some(d) = self.deepen {
            pkt_line(&mut out, format!("deepen {d}\n").as_bytes());
        }
        if let Some(f) = &self.filter {
            pkt_line(&mut out, format!("filter {f}\n").as_bytes());
        }
        for w in &self.wants {
            pkt_line(&mut out, format!("want {w}\n").as_bytes());
        }
        pkt_line(&mut out, b"done\n");
        out.extend_from_slice(b"0000");
        out
    }
}

/// What a `fetch` response said besides the pack.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FetchResponse {
    /// Commits the server cut off at the requested depth (`shallow-info`).
    pub shallow: Vec<String>,
    /// Commits that are no longer shallow.
    pub unshallow: Vec<String>,
    /// Pack bytes received.
    pub pack_bytes: u64,
}

/// Reads a `fetch` response, streaming the pack (side-band channel 1) into `pack`.
pub(crate) fn read_fetch_response<R: Read>(r: &mut PktReader<R>, pack: &mut dyn Write) -> Result<FetchResponse, Fault> {
    let mut resp = FetchResponse::default();
    loop {
        let Some(section) = r.read_line()? else {
            return Err(Fault::Protocol("the response ended without a packfile section".into()));
        };
        match section.as_str() {
            "packfile" => {
                resp.pack_bytes = demux(r, pack, &mut |_| {})?;
                return Ok(resp);
            }
            "shallow-info" | "acknowledgments" | "wanted-refs" | "packfile-uris" => loop {
                match r.read()? {
                    Pkt::Delim => break,
                    Pkt::Data(d) if section == "shallow-info" => {
                        let line = text(d);
                        match line.split_once(' ') {
                            Some(("shallow", oid)) => resp.shallow.push(oid.to_owned()),
                            Some(("unshallow", oid)) => resp.unshallow.push(oid.to_owned()),
                            _ => return Err(Fault::Protocol(format!("unexpected shallow-info line `{line}`"))),
                        }
                    }
                    Pkt::Data(_) => {}
                    Pkt::Flush | Pkt::End => {
                        return Err(Fault::Protocol(format!("the response ended after `{section}` without a pack")));
                    }
                }
            },
            other => return Err(Fault::Protocol(format!("unknown response section `{other}`"))),
        }
    }
}

/// Splits side-band-64k data up to the flush: channel 1 into `pack`, channel 2 (progress) to
/// `progress`, channel 3 (a fatal error) into [`Fault::Remote`]. Returns the pack bytes.
pub(crate) fn demux<R: Read>(
    r: &mut PktReader<R>,
    pack: &mut dyn Write,
    progress: &mut dyn FnMut(&[u8]),
) -> Result<u64, Fault> {
    let mut bytes = 0u64;
    loop {
        match r.read()? {
            Pkt::Flush | Pkt::End => return Ok(bytes),
            Pkt::Delim => return Err(Fault::Protocol("delimiter inside the packfile section".into())),
            Pkt::Data([1, data @ ..]) => {
                pack.write_all(data).map_err(|e| Fault::Store(e.to_string()))?;
                bytes += data.len() as u64;
            }
            Pkt::Data([2, msg @ ..]) => progress(msg),
            Pkt::Data([3, msg @ ..]) => return Err(Fault::Remote(text(msg))),
            Pkt::Data(d) => {
                return Err(Fault::Protocol(format!("side-band channel {:?} is unknown", d.first())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkts(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            match *l {
                b"0000" | b"0001" | b"0002" => out.extend_from_slice(l),
                l => pkt_line(&mut out, l),
            }
        }
        out
    }

    #[test]
    fn reads_pkt_lines() {
        let body = pkts(&[b"hello\n", b"0001", b"x", b"0000", b"0002"]);
        let mut r = PktReader::new(&body[..]);
        assert_eq!(r.read().unwrap(), Pkt::Data(b"hello\n"));
        assert_eq!(r.read().unwrap(), Pkt::Delim);
        assert_eq!(r.read_line().unwrap().as_deref(), Some("x"));
        assert_eq!(r.read().unwrap(), Pkt::Flush);
        assert_eq!(r.read().unwrap(), Pkt::End);
        assert!(matches!(r.read(), Err(Fault::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn rejects_malformed_pkt_lines() {
        for bad in [&b"00zz"[..], b"0003", b"fff1xxxx", b"+001"] {
            assert!(matches!(PktReader::new(bad).read(), Err(Fault::Protocol(_))), "{bad:?}");
        }
        // Cut inside a line: an I/O fault (transient), not a protocol one.
        assert!(matches!(PktReader::new(&b"000ahel"[..]).read(), Err(Fault::Io(_))));
        let err = pkts(&[b"ERR upload-pack: not our ref 1234\n"]);
        match PktReader::new(&err[..]).read() {
            Err(Fault::Remote(m)) => assert_eq!(m, "upload-pack: not our ref 1234"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_v2_capabilities() {
        let body = pkts(&[
            b"version 2\n",
            b"agent=git/2.39.5\n",
            b"ls-refs=unborn\n",
            b"fetch=shallow wait-for-done filter\n",
            b"server-option\n",
            b"object-format=sha1\n",
            b"0000",
        ]);
        let Advertisement::V2(caps) = read_advertisement(&mut PktReader::new(&body[..])).unwrap() else {
            panic!("v2 expected");
        };
        assert_eq!(caps.get("agent"), Some("git/2.39.5"));
        assert_eq!(caps.get("server-option"), Some(""));
        assert!(caps.fetch_has("filter") && caps.fetch_has("shallow") && !caps.fetch_has("wait"));
        assert_eq!(caps.partial_fetch_refused(true), None);

        // Over smart HTTP some servers put the service header first.
        let mut http = pkts(&[b"# service=git-upload-pack\n", b"0000"]);
        http.extend(pkts(&[b"version 2\n", b"fetch=shallow\n", b"0000"]));
        let Advertisement::V2(caps) = read_advertisement(&mut PktReader::new(&http[..])).unwrap() else {
            panic!("v2 expected");
        };
        assert!(caps.partial_fetch_refused(true).unwrap().contains("uploadpack.allowFilter"));
        assert_eq!(caps.partial_fetch_refused(false), None, "a whole-commit fetch needs no filter");
        let caps = Capabilities { caps: vec![("fetch".into(), Some("shallow filter".into()))] };
        assert_eq!(caps.partial_fetch_refused(true), None);
        let caps = Capabilities {
            caps: vec![
                ("fetch".into(), Some("shallow filter".into())),
                ("object-format".into(), Some("sha256".into())),
            ],
        };
        assert!(caps.partial_fetch_refused(true).unwrap().contains("sha256"));
        assert!(Capabilities::default().partial_fetch_refused(false).is_some());
    }

    #[test]
    fn older_protocols_are_recognised() {
        let v0 = pkts(&[
            format!("{} HEAD\0multi_ack side-band-64k\n", "a".repeat(40)).as_bytes(),
            format!("{} refs/heads/main\n", "a".repeat(40)).as_bytes(),
            b"0000",
        ]);
        assert!(matches!(read_advertisement(&mut PktReader::new(&v0[..])), Ok(Advertisement::Older)));
        let mut http = pkts(&[b"# service=git-upload-pack\n", b"0000"]);
        http.extend(v0);
        assert!(matches!(read_advertisement(&mut PktReader::new(&http[..])), Ok(Advertisement::Older)));
        let v1 = pkts(&[b"version 1\n"]);
        assert!(matches!(read_advertisement(&mut PktReader::new(&v1[..])), Ok(Advertisement::Older)));
    }

    #[test]
    fn encodes_fetch_requests() {
        let caps = Capabilities {
            caps: vec![("agent".into(), Some("git/2".into())), ("object-format".into(), Some("sha1".into()))],
        };
        let req = FetchRequest { wants: vec!["a".repeat(40)], deepen: Some(1), filter: Some("blob:none".into()) };
        let body = req.encode(&caps);
        let mut r = PktReader::new(&body[..]);
        let mut lines = Vec::new();
        loop {
            match r.read().unwrap() {
                Pkt::Data(d) => lines.push(String::from_utf8(d.to_vec()).unwrap()),
                Pkt::Delim => lines.push("|".into()),
                Pkt::Flush => break,
                Pkt::End => panic!("no response-end in requests"),
            }
        }
        let agent = format!("agent=gamezone-init/{}\n", env!("CARGO_PKG_VERSION"));
        let want = format!("want {}\n", "a".repeat(40));
        assert_eq!(
            lines,
            [
                "command=fetch\n",
                &agent,
                "object-format=sha1\n",
                "|",
                "ofs-delta\n",
                "no-progress\n",
                "deepen 1\n",
                "filter blob:none\n",
                &want,
                "done\n"
            ]
        );
        // Without the advertisement's agent/object-format, neither is sent.
        let plain = FetchRequest { wants: vec!["b".repeat(40)], ..Default::default() }.encode(&Capabilities::default());
        assert!(plain.starts_with(b"0012command=fetch\n0001"), "{}", String::from_utf8_lossy(&plain));
    }

    #[test]
    fn demultiplexes_the_pack() {
        let body = pkts(&[
            b"shallow-info\n",
            format!("shallow {}\n", "c".repeat(40)).as_bytes(),
            format!("unshallow {}\n", "d".repeat(40)).as_bytes(),
            b"0001",
            b"packfile\n",
            b"\x02Enumerating objects: 3\n",
            b"\x01PACK",
            b"\x02Counting\r",
            b"\x01rest",
            b"0000",
        ]);
        let mut pack = Vec::new();
        let resp = read_fetch_response(&mut PktReader::new(&body[..]), &mut pack).unwrap();
        assert_eq!(pack, b"PACKrest");
        assert_eq!(
            resp,
            FetchResponse { shallow: vec!["c".repeat(40)], unshallow: vec!["d".repeat(40)], pack_bytes: 8 }
        );

        let mut progress = Vec::new();
        let body = pkts(&[b"\x02a", b"\x01b", b"\x02c", b"0000"]);
        let n = demux(&mut PktReader::new(&body[..]), &mut Vec::new(), &mut |m| progress.extend_from_slice(m)).unwrap();
        assert_eq!((n, &progress[..]), (1, &b"ac"[..]));
    }

    #[test]
    fn side_band_errors_and_truncation() {
        let body = pkts(&[b"packfile\n", b"\x01PACK", b"\x03fatal: out of memory\n"]);
        match read_fetch_response(&mut PktReader::new(&body[..]), &mut Vec::new()) {
            Err(Fault::Remote(m)) => assert_eq!(m, "fatal: out of memory"),
            other => panic!("{other:?}"),
        }
        let body = pkts(&[b"packfile\n", b"\x01PACK"]);
        assert!(matches!(read_fetch_response(&mut PktReader::new(&body[..]), &mut Vec::new()), Err(Fault::Io(_))));
        let body = pkts(&[b"packfile\n", b"\x07??", b"0000"]);
        assert!(matches!(
            read_fetch_response(&mut PktReader::new(&body[..]), &mut Vec::new()),
            Err(Fault::Protocol(_))
        ));
        let body = pkts(&[b"acknowledgments\n", b"NAK\n", b"0000"]);
        assert!(matches!(
            read_fetch_response(&mut PktReader::new(&body[..]), &mut Vec::new()),
            Err(Fault::Protocol(_))
        ));
        let body = pkts(&[b"bogus\n"]);
        assert!(matches!(
            read_fetch_response(&mut PktReader::new(&body[..]), &mut Vec::new()),
            Err(Fault::Protocol(_))
        ));
        // A sink that fails (disk full) is a store fault, not the server's.
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("no space left on device"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let body = pkts(&[b"packfile\n", b"\x01PACK", b"0000"]);
        assert!(matches!(read_fetch_response(&mut PktReader::new(&body[..]), &mut Full), Err(Fault::Store(_))));
    }
}
