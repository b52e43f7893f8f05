//! `meshwire get topology -o dot`: the topology as a Graphviz graph (nodes by forwarder, devices,
//! endpoints on their node or device, links with their MTU; what is down in red).

use std::collections::BTreeSet;
use std::fmt::Write;

use meshwire_models::Topology;

/// A DOT string literal: quoted, with `"` and `\` escaped and newlines as `\n`.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The graph. `endpoints`: (name, the node or device it is on, down); `links_down`: links the
/// data plane reported down (a link the manifest sets down is drawn down too).
pub fn topology(
    t: &Topology,
    endpoints: &[(String, String, bool)],
    links_down: &BTreeSet<String>,
) -> String {
    let mut g = String::from(
        "graph meshwire {\n  graph [overlap=false, splines=true, fontname=\"Helvetica\"];\n  node [fontname=\"Helvetica\", fontsize=10, style=filled];\n  edge [fontname=\"Helvetica\", fontsize=8];\n",
    );
    for n in t.nodes.values() {
        let (shape, color) = match n.forwarder.to_string().as_str() {
            "ovs" => ("hexagon", "#2da44e"),
            _ => ("box", "#54aeff"),
        };
        let _ = writeln!(
            g,
            "  {} [shape={shape}, fillcolor={}, label={}];",
            q(&n.name),
            q(color),
            q(&format!("{}\n{}", n.name, n.forwarder))
        );
    }
    for d in t.devices.values() {
        let _ = writeln!(
            g,
            "  {} [shape=diamond, fillcolor=\"#bf8700\", label={}];",
            q(&d.name),
            q(&format!("{}\n{}", d.name, d.kind))
        );
    }
    for l in t.links.values() {
        let down = !l.up || links_down.contains(&l.name);
        let style = if down {
            ", color=\"#cf222e\", fontcolor=\"#cf222e\", style=dashed"
        } else {
            ""
        };
        let _ = writeln!(
            g,
            "  {} -- {} [label={}{style}];",
            q(&l.a.vertex),
            q(&l.b.vertex),
            q(&format!(
                "{} mtu {}{}",
                l.name,
                l.mtu,
                if down { " DOWN" } else { "" }
            ))
        );
    }
    for (name, vertex, down) in endpoints {
        let id = q(&format!("endpoint/{name}"));
        let color = if *down { "#cf222e" } else { "#8250df" };
        let _ = writeln!(
            g,
            "  {id} [shape=ellipse, fontcolor=white, fillcolor={}, label={}];\n  {id} -- {} [style=dotted];",
            q(color),
            q(name),
            q(vertex)
        );
    }
    g.push_str("}\n");
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input: two nodes, a device and three links (one down by the manifest, one reported down),
    /// and an endpoint on the device that is down. Output: one statement per vertex, link and
    /// endpoint; the two down links and the endpoint in red; names quoted.
    #[test]
    fn draws_vertices_links_endpoints_and_what_is_down() {
        let m = meshwire_models::Manifest::parse(
            "t",
            "---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n1}\nspec: {forwarder: kernel}\n---\napiVersion: meshwire.io/v1\nkind: Node\nmetadata: {name: n2}\nspec: {forwarder: ovs}\n---\napiVersion: meshwire.io/v1\nkind: Device\nmetadata: {name: fw1}\nspec: {kind: firewall}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: a}\nspec: {endpoints: [\"n1:eth1\", \"n2:eth1\"], mtu: 9000}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: b}\nspec: {endpoints: [\"n1:eth2\", \"fw1:eth1\"], up: false}\n---\napiVersion: meshwire.io/v1\nkind: Link\nmetadata: {name: c}\nspec: {endpoints: [\"n2:eth2\", \"fw1:eth2\"]}\n",
        )
        .unwrap();
        let mut t = Topology::default();
        for o in m.objects {
            match o {
                meshwire_models::Object::Node(n) => {
                    t.nodes.insert(n.name.clone(), n);
                }
                meshwire_models::Object::Device(d) => {
                    t.devices.insert(d.name.clone(), d);
                }
                meshwire_models::Object::Link(l) => {
                    t.links.insert(l.name.clone(), l);
                }
                _ => {}
            }
        }
        let down = BTreeSet::from(["c".to_string()]);
        let g = topology(&t, &[("fw".into(), "fw1".into(), true)], &down);
        assert!(g.starts_with("graph meshwire {\n") && g.ends_with("}\n"));
        assert!(g.contains("\"n1\" [shape=box"), "{g}");
        assert!(g.contains("\"n2\" [shape=hexagon"), "{g}");
        assert!(g.contains("\"fw1\" [shape=diamond"), "{g}");
        assert!(
            g.contains("\"n1\" -- \"n2\" [label=\"a mtu 9000\"];"),
            "{g}"
        );
        assert_eq!(g.matches("style=dashed").count(), 2, "{g}");
        assert!(
            g.contains("\"endpoint/fw\" -- \"fw1\" [style=dotted];"),
            "{g}"
        );
        assert!(g.contains("fillcolor=\"#cf222e\", label=\"fw\""), "{g}");
    }

    #[test]
    fn quotes_what_it_prints() {
        assert_eq!(q("a\"b\\c\nd\u{7}"), "\"a\\\"b\\\\c\\nd\"");
    }
}
