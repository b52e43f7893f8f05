//! The device plugin's devices: tokens, as upstream's SR-IOV support has them. A pool of N VFs
//! offers N tokens (`sriov-<uuid>`); the kubelet hands tokens to pods (`Allocate`), a pod's
//! request names its token (`tokenID`), and the node wires a free VF of the token's pool. A
//! token is not a particular VF: which VF serves it is decided at request time.
//!
//! The token list is kept in the agent's state directory (one JSON file, replaced atomically),
//! so an agent restart keeps the IDs the kubelet knows and which of them it has allocated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file in the state directory.
pub const FILE: &str = "sriov-tokens.json";
/// Token IDs: this prefix and a UUID (42 characters; the kubelet allows 63).
pub const PREFIX: &str = "sriov-";
/// The environment variable prefix upstream clients read (`NSM_SRIOV_TOKENS_<pool>=id,id`).
pub const ENV_PREFIX: &str = "NSM_SRIOV_TOKENS_";

/// One token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    /// Handed to a container by the kubelet (`Allocate`).
    #[serde(default)]
    pub allocated: bool,
}

/// Every pool's tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub pools: BTreeMap<String, Vec<Token>>,
}

/// Why a token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token {id}: unknown on this node (it was never offered by its device plugin)")]
    Unknown { id: String },
    #[error("token {id}: not allocated to any pod by the kubelet")]
    NotAllocated { id: String },
    #[error("token {id} belongs to pool {pool}, not {wanted}")]
    WrongPool {
        id: String,
        pool: String,
        wanted: String,
    },
    #[error("state file {path}: {why}")]
    State { path: String, why: String },
}

/// A new token ID: `sriov-` and a random UUID.
pub fn new_id() -> String {
    format!("{PREFIX}{}", uuid::Uuid::new_v4())
}

/// Whether `s` has a token ID's form (no more: whether it is known is [`Tokens::check`]'s).
pub fn is_token_id(s: &str) -> bool {
    s.strip_prefix(PREFIX)
        .is_some_and(|u| uuid::Uuid::parse_str(u).is_ok() && u.len() == 36)
}

/// Upstream's environment variable for `ids` of `pool`: the pool name is kept as it is.
pub fn env(pool: &str, ids: &[String]) -> (String, String) {
    (format!("{ENV_PREFIX}{pool}"), ids.join(","))
}

impl Tokens {
    /// Reads the state file in `dir` (none yet: no tokens).
    pub fn load(dir: &Path) -> Result<Tokens, TokenError> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TokenError::State {
                path: path.display().to_string(),
                why: format!("not a token list: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tokens::default()),
            Err(e) => Err(TokenError::State {
                path: path.display().to_string(),
                why: e.to_string(),
            }),
        }
    }

    /// Writes the state file in `dir` (a temporary file renamed over it).
    pub fn save(&self, dir: &Path) -> Result<(), TokenError> {
        let path: PathBuf = dir.join(FILE);
        let err = |why: String| TokenError::State {
            path: path.display().to_string(),
            why,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let tmp = dir.join(format!("{FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        // On disk before it is acknowledged: the file, then its name in the directory.
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
            f.write_all(&bytes).map_err(|e| err(e.to_string()))?;
            f.sync_all().map_err(|e| err(e.to_string()))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(e.to_string()))
    }

    /// Makes each pool hold exactly `sizes[pool]` tokens: new IDs for new VFs; surplus tokens go,
    /// unallocated ones first (an allocated token beyond the pool's size stays, reported
    /// unhealthy). Pools no longer configured go. Whether anything changed.
    ///
    /// The kubelet never says when a pod is gone (there is no deallocation in the API), so
    /// "allocated" means "handed to a container at some time"; which pod holds a token now is
    /// the kubelet's PodResources API's to say, which is not read.
    pub fn resize(&mut self, sizes: &BTreeMap<String, usize>) -> bool {
        let before = self.clone();
        self.pools.retain(|p, _| sizes.contains_key(p));
        for (pool, &n) in sizes {
            let tokens = self.pools.entry(pool.clone()).or_default();
            while tokens.len() < n {
                tokens.push(Token {
                    id: new_id(),
                    allocated: false,
                });
            }
            while tokens.len() > n {
                match tokens.iter().rposition(|t| !t.allocated) {
                    Some(i) => {
                        tokens.remove(i);
                    }
                    None => break,
                }
            }
        }
        *self != before
    }

    /// Marks `ids` of `pool` allocated (the kubelet's `Allocate`); unknown ones are an error and
    /// nothing changes.
    pub fn allocate(&mut self, pool: &str, ids: &[String]) -> Result<bool, TokenError> {
        for id in ids {
            self.pool_of(id).and_then(|p| {
                (p == pool)
                    .then_some(())
                    .ok_or_else(|| TokenError::WrongPool {
                        id: id.clone(),
                        pool: p.to_string(),
                        wanted: pool.to_string(),
                    })
            })?;
        }
        let wanted: BTreeSet<&String> = ids.iter().collect();
        let mut changed = false;
        for t in self.pools.get_mut(pool).into_iter().flatten() {
            if wanted.contains(&t.id) && !t.allocated {
                t.allocated = true;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// The pool a token belongs to.
    pub fn pool_of(&self, id: &str) -> Result<&str, TokenError> {
        self.pools
            .iter()
            .find(|(_, ts)| ts.iter().any(|t| t.id == id))
            .map(|(p, _)| p.as_str())
            .ok_or_else(|| TokenError::Unknown { id: id.to_string() })
    }

    /// The pool of a token a request may use: known and allocated by the kubelet.
    pub fn check(&self, id: &str) -> Result<&str, TokenError> {
        let pool = self.pool_of(id)?;
        let allocated = self
            .pools
            .get(pool)
            .is_some_and(|ts| ts.iter().any(|t| t.id == id && t.allocated));
        if !allocated {
            return Err(TokenError::NotAllocated { id: id.to_string() });
        }
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(v: &[(&str, usize)]) -> BTreeMap<String, usize> {
        v.iter().map(|(p, n)| (p.to_string(), *n)).collect()
    }

    #[test]
    fn ids_have_upstreams_form() {
        let id = new_id();
        assert_eq!(id.len(), 42);
        assert!(is_token_id(&id));
        assert!(!is_token_id("sriov-1234"));
        assert!(!is_token_id(&id[1..]));
        assert_eq!(
            env("worker.domain/10G", &["a".into(), "b".into()]),
            ("NSM_SRIOV_TOKENS_worker.domain/10G".into(), "a,b".into())
        );
    }

    #[test]
    fn pools_resize_keeping_allocated_tokens_and_the_file_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tokens::load(dir.path()).unwrap();
        assert!(t.resize(&sizes(&[("d/a", 3), ("d/b", 1)])));
        assert!(!t.resize(&sizes(&[("d/a", 3), ("d/b", 1)])), "stable");
        let a: Vec<String> = t.pools["d/a"].iter().map(|t| t.id.clone()).collect();
        assert!(t.allocate("d/a", &a[2..]).unwrap());
        assert!(matches!(
            t.allocate("d/b", &a[..1]),
            Err(TokenError::WrongPool { .. })
        ));
        assert!(matches!(
            t.allocate("d/a", &["sriov-x".into()]),
            Err(TokenError::Unknown { .. })
        ));
        assert_eq!(t.check(&a[2]).unwrap(), "d/a");
        assert!(matches!(
            t.check(&a[0]),
            Err(TokenError::NotAllocated { .. })
        ));
        t.save(dir.path()).unwrap();
        let mut back = Tokens::load(dir.path()).unwrap();
        assert_eq!(back, t);
        // One VF fewer: a free token goes, the allocated one stays.
        back.resize(&sizes(&[("d/a", 1)]));
        assert_eq!(back.pools["d/a"].len(), 1);
        assert_eq!(back.pools["d/a"][0].id, a[2]);
        assert!(!back.pools.contains_key("d/b"));
    }

    #[test]
    fn a_damaged_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let e = Tokens::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(FILE), "{e}");
    }
}
