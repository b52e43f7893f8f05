//! Where a client's network namespace is, as an NSM kernel mechanism's `inodeURL` parameter
//! names it: `inode://DEV/INO` (the namespace file's device and inode numbers, what upstream NSM
//! clients send), `file:///proc/PID/ns/net`, or a named namespace (`file:///run/netns/NAME`,
//! `file:///var/run/netns/NAME`). Parsing only; finding the namespace is the node's business.

/// A parsed `inodeURL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsRef {
    /// The namespace whose file has this device and inode (`stat` of `/proc/PID/ns/net`).
    Inode { dev: u64, ino: u64 },
    /// The namespace process `pid` is in.
    Process { pid: u32 },
    /// A namespace named with `ip netns` (one path component, checked).
    Named(String),
}

/// Why an `inodeURL` was refused (never retryable: the client must send another).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inodeURL {url:?}: {reason}")]
pub struct NetnsRefError {
    pub url: String,
    pub reason: String,
}

/// Longest `inodeURL` looked at.
pub const MAX_LEN: usize = 512;

impl NetnsRef {
    /// Parses an `inodeURL`.
    pub fn parse(url: &str) -> Result<NetnsRef, NetnsRefError> {
        let fail = |reason: &str| NetnsRefError {
            url: url.chars().take(80).collect(),
            reason: reason.to_string(),
        };
        if url.len() > MAX_LEN {
            return Err(fail("longer than 512 bytes"));
        }
        if let Some(rest) = url.strip_prefix("inode://") {
            let (dev, ino) = rest
                .split_once('/')
                .ok_or_else(|| fail("expected inode://DEV/INO"))?;
            let num = |s: &str, what: &str| {
                s.parse::<u64>()
                    .map_err(|_| fail(&format!("{what} {s:?} is not a decimal number")))
            };
            return Ok(NetnsRef::Inode {
                dev: num(dev, "device")?,
                ino: num(ino, "inode")?,
            });
        }
        let path = url
            .strip_prefix("file://")
            .ok_or_else(|| fail("expected inode://DEV/INO or file:///proc/PID/ns/net"))?;
        if let Some(pid) = path
            .strip_prefix("/proc/")
            .and_then(|p| p.strip_suffix("/ns/net"))
        {
            let pid: u32 = pid
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| fail("the process id is not a positive number"))?;
            return Ok(NetnsRef::Process { pid });
        }
        let name = path
            .strip_prefix("/run/netns/")
            .or_else(|| path.strip_prefix("/var/run/netns/"))
            .ok_or_else(|| {
                fail("a file URL names /proc/PID/ns/net or a namespace under /run/netns")
            })?;
        crate::validate::check_netns(name).map_err(|e| fail(&e))?;
        Ok(NetnsRef::Named(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_clients_send() {
        assert_eq!(
            NetnsRef::parse("inode://4/4026532310"),
            Ok(NetnsRef::Inode {
                dev: 4,
                ino: 4026532310
            })
        );
        assert_eq!(
            NetnsRef::parse("file:///proc/1234/ns/net"),
            Ok(NetnsRef::Process { pid: 1234 })
        );
        assert_eq!(
            NetnsRef::parse("file:///var/run/netns/blue"),
            Ok(NetnsRef::Named("blue".into()))
        );
        assert_eq!(
            NetnsRef::parse("file:///run/netns/blue"),
            Ok(NetnsRef::Named("blue".into()))
        );
    }

    #[test]
    fn what_is_refused_says_why() {
        for (url, why) in [
            ("inode://4", "inode://DEV/INO"),
            ("inode://x/1", "device \"x\""),
            ("inode://4/-1", "inode \"-1\""),
            ("file:///proc/0/ns/net", "positive"),
            ("file:///proc/self/ns/net", "positive"),
            ("file:///run/netns/../etc", "namespace name"),
            ("file:///run/netns/a/b", "one path component"),
            ("file:///etc/passwd", "/proc/PID/ns/net"),
            ("http://x", "expected inode://"),
        ] {
            let e = NetnsRef::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
        assert!(NetnsRef::parse(&format!("inode://4/{}", "1".repeat(600))).is_err());
    }
}
