//! What the vL3 lab tests share: names resolved in a namespace, and 20 ms pings measured
//! through a failure.
#![allow(dead_code)]

use std::process::{Command, Stdio};

use super::lab::Lab;

/// The address `name` resolves to in `node` (`getent hosts`), if any.
pub fn getent(lab: &Lab, node: &str, name: &str) -> Option<String> {
    let out = lab.exec(node, &["getent", "hosts", name]);
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

/// A `ping -D` every 20 ms from `from` to `to` (a count, not a deadline: with a deadline,
/// ping exits at the first ICMP error, as a lost router answers "unreachable").
pub fn pinger(lab: &Lab, from: &str, to: &str) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.ns(from)])
        .args(["ping", "-i", "0.02", "-D", "-c", "1500", to])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// (replies, largest gap in s) of a `ping -D` run stopped with SIGINT.
pub fn stop(p: std::process::Child) -> (usize, f64) {
    let _ = Command::new("kill")
        .args(["-INT", &p.id().to_string()])
        .status();
    let out = p.wait_with_output().unwrap().stdout;
    let text = String::from_utf8_lossy(&out);
    let times: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    (times.len(), gap)
}
