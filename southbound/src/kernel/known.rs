//! The namespaces a node's driver has wired, kept on disk so a restarted agent can still sweep
//! them.
//!
//! A sweep looks only in namespaces it knows belong to it: those of desired connections and of
//! the topology's nodes. A removal that could not reach the node (its agent was away while a
//! client healed elsewhere) leaves our interface in a workload namespace no desired connection
//! names any more; only the memory of having wired there lets the agent's next full set find
//! and remove it, even after the agent restarted. A namespace that no longer exists is
//! forgotten.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

/// The most namespaces remembered (a bound, like every cache here); past it a new one is not
/// remembered, and a warning says so.
pub const MAX_KNOWN: usize = 65_536;

/// Namespace names, in memory and (with a path) in a file rewritten on change.
#[derive(Debug, Default)]
pub struct Known {
    path: Option<PathBuf>,
    names: Mutex<BTreeSet<String>>,
}

impl Known {
    /// Remembers in `path` (a JSON list), starting from what it holds; an unreadable file
    /// starts empty and is rewritten at the next change (logged).
    pub fn at(path: PathBuf) -> Known {
        let names = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<BTreeSet<String>>(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable namespace memory; starting empty");
                BTreeSet::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "namespace memory not read; starting empty");
                BTreeSet::new()
            }
        };
        Known {
            path: Some(path),
            names: Mutex::new(names),
        }
    }

    pub fn all(&self) -> BTreeSet<String> {
        self.names.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Remembers `ns` (a no-op when it is known).
    pub fn note(&self, ns: &Option<String>) {
        let Some(ns) = ns else { return };
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.contains(ns) {
            return;
        }
        if names.len() >= MAX_KNOWN {
            tracing::warn!(netns = %ns, max = MAX_KNOWN, "too many namespaces remembered; this one is not (a leftover in it is swept only while a connection names it)");
            return;
        }
        names.insert(ns.clone());
        self.save(&names);
    }

    /// Forgets `ns` (it no longer exists).
    pub fn forget(&self, ns: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.remove(ns) {
            self.save(&names);
        }
    }

    fn save(&self, names: &BTreeSet<String>) {
        let Some(path) = &self.path else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(names).unwrap_or_default())?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "namespace memory not saved");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input: namespaces noted, one forgotten, the file read back by a new instance.
    /// Output: the same set; a second note of a known name changes nothing.
    #[test]
    fn remembers_across_instances_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("namespaces.json");
        let k = Known::at(path.clone());
        k.note(&Some("a".into()));
        k.note(&Some("b".into()));
        k.note(&Some("a".into()));
        k.note(&None);
        k.forget("b");
        let again = Known::at(path.clone());
        assert_eq!(again.all(), BTreeSet::from(["a".to_string()]));
        std::fs::write(&path, b"not json").unwrap();
        assert!(Known::at(path).all().is_empty());
    }
}
