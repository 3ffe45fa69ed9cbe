//! What GameZone's conditions are called, and how long their messages may be.

/// Condition types a GameZone reports.
pub mod types {
    /// The zone is fully up at its current generation.
    pub const READY: &str = "Ready";
    /// Every artifact layer is pinned.
    pub const ARTIFACTS_READY: &str = "ArtifactsReady";
    /// The current version's layers are in the artifact registry (only with `--artifact-registry`).
    pub const ARTIFACTS_PACKED: &str = "ArtifactsPacked";
    /// Every server mounts the current version's tree image (only when servers mount it):
    /// False names the servers whose node mounted it wrong and that copy it instead.
    pub const ARTIFACTS_MOUNTED: &str = "ArtifactsMounted";
    /// The migration of the current version succeeded.
    pub const MIGRATED: &str = "Migrated";
    /// Every server runs the current version and is Ready.
    pub const SERVERS_READY: &str = "ServersReady";
}

/// Condition types a GameServer reports.
pub mod server_types {
    /// The server's pod is Ready on its current template.
    pub const READY: &str = "Ready";
    /// Every port of the server has its host port (or needs none).
    pub const PORTS_ALLOCATED: &str = "PortsAllocated";
    /// The conditions the operator writes; the others (gates) are the game's.
    pub const OPERATOR_OWNED: [&str; 2] = [READY, PORTS_ALLOCATED];
}

/// The most of a message a condition keeps, as much as an Event's note: what a user's input
/// brings back (an error from a server they named, a refusal quoting their spec) is never
/// reflected whole, and a status stays small enough to be written.
pub const MESSAGE_MAX: usize = 1024;

/// `message` cut to at most [`MESSAGE_MAX`] bytes, at a character boundary, marked when cut.
pub fn bounded(message: &str) -> String {
    if message.len() <= MESSAGE_MAX {
        return message.to_string();
    }
    const MARK: &str = " …(cut)";
    let mut end = MESSAGE_MAX - MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(2000);
        let cut = bounded(&long);
        assert!(cut.len() <= MESSAGE_MAX && cut.ends_with("…(cut)"), "{} bytes", cut.len());
    }
}
