//! Flows: a desired flow set diffed against what a switch holds (by our cookie), applied in one
//! bundle. Pure except [`sync_flows`], which talks to one switch.

use std::collections::HashMap;

use super::plan::{Act, FlowTemplate, PortRef};
use super::PORT_LOCAL;
use crate::openflow::channel::{self, Switch};
use crate::openflow::{
    Action, FlowMod, FlowModCommand, Instruction, Message, MultipartReply, MultipartRequest,
    OxmField, ANY, NO_BUFFER,
};

/// What one flow sync changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

impl SyncStats {
    pub fn changed(&self) -> usize {
        self.added + self.modified + self.deleted
    }
}

/// A flow with port numbers: what is compared with the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSpec {
    pub cookie: u64,
    pub priority: u16,
    /// in_port first, then the others in a canonical order.
    pub matches: Vec<OxmField>,
    pub actions: Vec<Action>,
}

/// Canonical key of a flow: priority and its match fields in a fixed order.
fn flow_key(priority: u16, matches: &[OxmField]) -> (u16, Vec<Vec<u8>>) {
    let mut m: Vec<Vec<u8>> = matches
        .iter()
        .map(|f| {
            let mut v = Vec::new();
            f.encode(&mut v);
            v
        })
        .collect();
    m.sort();
    (priority, m)
}

/// The flow mods that turn `installed` into `desired`: deletes (strict, by our cookie), adds and
/// modifies. Flows present and equal are left alone. Pure.
pub fn diff_flows(
    installed: &[FlowSpec],
    desired: &[FlowSpec],
    may_delete: &(dyn Fn(u64) -> bool + Sync),
) -> (Vec<FlowMod>, SyncStats) {
    let mut stats = SyncStats::default();
    let have: HashMap<_, &FlowSpec> = installed
        .iter()
        .map(|f| (flow_key(f.priority, &f.matches), f))
        .collect();
    let want: HashMap<_, &FlowSpec> = desired
        .iter()
        .map(|f| (flow_key(f.priority, &f.matches), f))
        .collect();
    let mut mods = Vec::new();
    for (k, f) in &have {
        if !want.contains_key(k) && may_delete(f.cookie) {
            stats.deleted += 1;
            mods.push(flow_mod(FlowModCommand::DeleteStrict, f, u64::MAX));
        }
    }
    for (k, f) in &want {
        match have.get(k) {
            None => {
                stats.added += 1;
                mods.push(flow_mod(FlowModCommand::Add, f, 0));
            }
            Some(h) if h.cookie != f.cookie => {
                stats.modified += 1;
                mods.push(flow_mod(FlowModCommand::Add, f, 0));
            }
            Some(h) if h.actions != f.actions => {
                stats.modified += 1;
                mods.push(flow_mod(FlowModCommand::ModifyStrict, f, u64::MAX));
            }
            Some(_) => stats.unchanged += 1,
        }
    }
    (mods, stats)
}

fn flow_mod(command: FlowModCommand, f: &FlowSpec, cookie_mask: u64) -> FlowMod {
    let delete = matches!(
        command,
        FlowModCommand::Delete | FlowModCommand::DeleteStrict
    );
    FlowMod {
        cookie: f.cookie,
        cookie_mask,
        table_id: 0,
        command,
        idle_timeout: 0,
        hard_timeout: 0,
        priority: f.priority,
        buffer_id: NO_BUFFER,
        out_port: ANY,
        out_group: ANY,
        flags: 0,
        matches: f.matches.clone(),
        instructions: if delete {
            vec![]
        } else {
            vec![Instruction::ApplyActions(f.actions.clone())]
        },
    }
}

/// Reads the switch's flows in scope (`cookie`/`mask`, all tables) and applies the difference to
/// `desired` atomically in one bundle; `may_delete` guards which installed flows may go. Flows
/// already as desired are not touched (their counters and durations survive).
pub async fn sync_flows(
    sw: &Switch,
    desired: Vec<FlowSpec>,
    may_delete: &(dyn Fn(u64) -> bool + Sync),
    cookie: u64,
    mask: u64,
) -> Result<SyncStats, channel::ChannelError> {
    let parts = sw
        .request(Message::MultipartRequest(MultipartRequest::Flow {
            flags: 0,
            table_id: 0xff,
            out_port: ANY,
            out_group: ANY,
            cookie,
            cookie_mask: mask,
            matches: vec![],
        }))
        .await?;
    let installed: Vec<FlowSpec> = parts
        .iter()
        .flat_map(|m| match m {
            Message::MultipartReply(MultipartReply::Flow { flows, .. }) => {
                flows.iter().map(from_stats).collect::<Vec<_>>()
            }
            _ => vec![],
        })
        .collect();
    let (mods, stats) = diff_flows(&installed, &desired, may_delete);
    if !mods.is_empty() {
        sw.bundle(mods.into_iter().map(Message::FlowMod).collect())
            .await?;
    }
    Ok(stats)
}

/// The flow mod that adds `f` (for bulk installs and benchmarks).
pub fn add_flow(f: &FlowSpec) -> FlowMod {
    flow_mod(FlowModCommand::Add, f, 0)
}

pub(super) fn resolve(t: &FlowTemplate, ports: &HashMap<String, u32>) -> Result<FlowSpec, String> {
    let num = |p: &PortRef| match p {
        PortRef::Local => Ok(PORT_LOCAL),
        PortRef::Name(n) => ports
            .get(n)
            .copied()
            .ok_or_else(|| format!("port {n} has no OpenFlow number on {}", t.node)),
    };
    let mut matches = vec![OxmField::InPort(num(&t.in_port)?)];
    matches.extend(t.matches.iter().cloned());
    let actions = t
        .actions
        .iter()
        .map(|a| match a {
            Act::Output(p) => num(p).map(|port| Action::Output { port, max_len: 0 }),
            Act::Raw(a) => Ok(a.clone()),
        })
        .collect::<Result<_, _>>()?;
    Ok(FlowSpec {
        cookie: t.cookie,
        priority: t.priority,
        matches,
        actions,
    })
}

pub(super) fn from_stats(s: &crate::openflow::FlowStats) -> FlowSpec {
    let actions = s
        .instructions
        .iter()
        .flat_map(|i| match i {
            Instruction::ApplyActions(a) => a.clone(),
            _ => vec![],
        })
        .collect();
    FlowSpec {
        cookie: s.cookie,
        priority: s.priority,
        matches: s.matches.clone(),
        actions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cookie: u64, prio: u16, in_port: u32, out: u32) -> FlowSpec {
        FlowSpec {
            cookie,
            priority: prio,
            matches: vec![OxmField::InPort(in_port), OxmField::EthType(0x0800)],
            actions: vec![Action::Output {
                port: out,
                max_len: 0,
            }],
        }
    }

    #[test]
    fn diff_leaves_equal_flows_alone_and_changes_only_the_rest() {
        let installed = vec![
            spec(5, 100, 1, 2),
            spec(5, 100, 2, 1),
            spec(6, 100, 3, 4),
            spec(9, 100, 7, 8),
        ];
        let mut moved = spec(5, 100, 2, 9);
        // Same flow, match fields in another order: still equal.
        moved.matches.reverse();
        let desired = vec![spec(5, 100, 1, 2), moved, spec(5, 100, 5, 6)];
        let (mods, st) = diff_flows(&installed, &desired, &|c| c != 9);
        assert_eq!(
            st,
            SyncStats {
                added: 1,
                modified: 1,
                deleted: 1,
                unchanged: 1
            }
        );
        assert_eq!(mods.len(), 3);
        assert!(mods
            .iter()
            .any(|m| m.command == FlowModCommand::DeleteStrict
                && m.cookie == 6
                && m.cookie_mask == u64::MAX));
        // Cookie 9 is protected (not ours to delete).
        assert!(!mods.iter().any(|m| m.cookie == 9));
        let (none, st) = diff_flows(&installed[..2], &installed[..2], &|_| true);
        assert!(none.is_empty());
        assert_eq!(st.unchanged, 2);
    }
}
