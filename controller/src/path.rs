//! Path computation over the topology. Pure: no I/O, no clock.
//!
//! [`Graph`] is a compact adjacency built once per topology change. [`Graph::shortest`] is a
//! Dijkstra by link cost that honours link state, a minimum MTU and, for mechanisms carried hop
//! by hop (MPLS, VLAN), which vertices may be crossed; it stops as soon as the target's distance
//! is final. [`Graph::alternatives`] gives the k shortest loopless paths (Yen) for healing
//! around a failed link or vertex.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use meshwire_models::Topology;

/// A computed path: vertex and link indices into the [`Graph`], its cost and its MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub vertices: Vec<usize>,
    pub links: Vec<usize>,
    pub cost: u64,
    /// Smallest link MTU on the path (`u32::MAX` for a path of one vertex).
    pub mtu: u32,
}

#[derive(Debug, Clone)]
struct LinkInfo {
    name: String,
    cost: u32,
    mtu: u32,
    up: bool,
}

/// Constraints on a path.
pub struct Constraints<'a> {
    /// Every link must carry at least this MTU.
    pub min_mtu: u32,
    /// Vertices the path may pass through or end on (start is always allowed).
    pub vertex_ok: &'a dyn Fn(usize) -> bool,
    /// Links the path may use, beyond being up.
    pub link_ok: &'a dyn Fn(usize) -> bool,
}

/// The topology as a graph: vertices are nodes and devices, edges are links.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    names: Vec<String>,
    index: HashMap<String, usize>,
    adj: Vec<Vec<(u32, u32)>>,
    links: Vec<LinkInfo>,
}

impl Graph {
    pub fn build(topology: &Topology) -> Graph {
        let mut g = Graph::default();
        for name in topology.nodes.keys().chain(topology.devices.keys()) {
            g.index.insert(name.clone(), g.names.len());
            g.names.push(name.clone());
            g.adj.push(Vec::new());
        }
        for link in topology.links.values() {
            let (Some(&a), Some(&b)) = (g.index.get(&link.a.vertex), g.index.get(&link.b.vertex))
            else {
                continue; // a link to an unknown vertex carries nothing until the vertex exists
            };
            let li = g.links.len() as u32;
            g.links.push(LinkInfo {
                name: link.name.clone(),
                cost: link.cost.max(1),
                mtu: link.mtu,
                up: link.up,
            });
            g.adj[a].push((b as u32, li));
            g.adj[b].push((a as u32, li));
        }
        g
    }

    pub fn vertex(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn name(&self, v: usize) -> &str {
        &self.names[v]
    }

    pub fn link_name(&self, l: usize) -> &str {
        &self.links[l].name
    }

    pub fn link_index(&self, name: &str) -> Option<usize> {
        self.links.iter().position(|l| l.name == name)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn usable(&self, link: u32, next: u32, c: &Constraints) -> bool {
        let l = &self.links[link as usize];
        l.up && l.mtu >= c.min_mtu && (c.link_ok)(link as usize) && (c.vertex_ok)(next as usize)
    }

    /// The cheapest path from `from` to `to` under `c`, or `None`.
    pub fn shortest(&self, from: usize, to: usize, c: &Constraints) -> Option<Path> {
        if from == to {
            return Some(Path {
                vertices: vec![from],
                links: vec![],
                cost: 0,
                mtu: u32::MAX,
            });
        }
        let n = self.names.len();
        let mut dist = vec![u64::MAX; n];
        let mut prev: Vec<(u32, u32)> = vec![(u32::MAX, u32::MAX); n];
        let mut heap = BinaryHeap::new();
        dist[from] = 0;
        heap.push(Reverse((0u64, from as u32)));
        while let Some(Reverse((d, v))) = heap.pop() {
            let v = v as usize;
            if d > dist[v] {
                continue;
            }
            if v == to || d >= dist[to] {
                break;
            }
            for &(next, link) in &self.adj[v] {
                if !self.usable(link, next, c) {
                    continue;
                }
                let nd = d + u64::from(self.links[link as usize].cost);
                if nd < dist[next as usize] {
                    dist[next as usize] = nd;
                    prev[next as usize] = (v as u32, link);
                    heap.push(Reverse((nd, next)));
                }
            }
        }
        if dist[to] == u64::MAX {
            return None;
        }
        let mut vertices = vec![to];
        let mut links = Vec::new();
        let mut v = to;
        while v != from {
            let (p, l) = prev[v];
            links.push(l as usize);
            vertices.push(p as usize);
            v = p as usize;
        }
        vertices.reverse();
        links.reverse();
        let mtu = links
            .iter()
            .map(|&l| self.links[l].mtu)
            .min()
            .unwrap_or(u32::MAX);
        Some(Path {
            vertices,
            links,
            cost: dist[to],
            mtu,
        })
    }

    /// Up to `k` loopless paths from `from` to `to`, cheapest first (Yen's algorithm).
    pub fn alternatives(&self, from: usize, to: usize, k: usize, c: &Constraints) -> Vec<Path> {
        let found = pathfinding::directed::yen::yen(
            &from,
            |&v| {
                self.adj[v]
                    .iter()
                    .filter(|&&(next, link)| self.usable(link, next, c))
                    .map(|&(next, link)| (next as usize, u64::from(self.links[link as usize].cost)))
                    .collect::<Vec<_>>()
            },
            |&v| v == to,
            k,
        );
        found
            .into_iter()
            .map(|(vertices, cost)| {
                let links: Vec<usize> = vertices
                    .windows(2)
                    .map(|w| {
                        self.cheapest_link(w[0], w[1], c)
                            .expect("yen only follows usable links")
                    })
                    .collect();
                let mtu = links
                    .iter()
                    .map(|&l| self.links[l].mtu)
                    .min()
                    .unwrap_or(u32::MAX);
                Path {
                    vertices,
                    links,
                    cost,
                    mtu,
                }
            })
            .collect()
    }

    fn cheapest_link(&self, a: usize, b: usize, c: &Constraints) -> Option<usize> {
        self.adj[a]
            .iter()
            .filter(|&&(next, link)| next as usize == b && self.usable(link, next, c))
            .min_by_key(|&&(_, link)| self.links[link as usize].cost)
            .map(|&(_, link)| link as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwire_models::{Link, LinkEnd, Node};
    use proptest::prelude::*;

    fn topo(n: usize, edges: &[(usize, usize, u32, u32, bool)]) -> Topology {
        let mut t = Topology::default();
        for i in 0..n {
            let name = format!("n{i}");
            t.nodes.insert(
                name.clone(),
                Node {
                    name,
                    forwarder: Default::default(),
                    underlay_address: None,
                    netns: None,
                    ovsdb: None,
                    labels: Default::default(),
                },
            );
        }
        for (i, &(a, b, cost, mtu, up)) in edges.iter().enumerate() {
            let name = format!("l{i}");
            let end = |v: usize| LinkEnd {
                vertex: format!("n{v}"),
                interface: format!("eth{i}"),
                address: None,
            };
            t.links.insert(
                name.clone(),
                Link {
                    name,
                    a: end(a),
                    b: end(b),
                    mtu,
                    cost,
                    up,
                },
            );
        }
        t
    }

    fn allow_all() -> (impl Fn(usize) -> bool, impl Fn(usize) -> bool) {
        (|_| true, |_| true)
    }

    #[test]
    fn honours_cost_state_and_mtu() {
        // n0 - n1 - n3 cheap but n1-n3 is down; n0 - n2 - n3 has a small MTU; n0 - n3 direct is dear.
        let t = topo(
            4,
            &[
                (0, 1, 1, 9000, true),
                (1, 3, 1, 9000, false),
                (0, 2, 1, 1400, true),
                (2, 3, 1, 9000, true),
                (0, 3, 100, 9000, true),
            ],
        );
        let g = Graph::build(&t);
        let (v, l) = allow_all();
        let c = Constraints {
            min_mtu: 1300,
            vertex_ok: &v,
            link_ok: &l,
        };
        assert_eq!(g.shortest(0, 3, &c).unwrap().vertices, vec![0, 2, 3]);
        let c = Constraints {
            min_mtu: 1500,
            vertex_ok: &v,
            link_ok: &l,
        };
        let p = g.shortest(0, 3, &c).unwrap();
        assert_eq!((p.vertices, p.cost), (vec![0, 3], 100));
        let no_n3 = |x: usize| x != 3;
        let c = Constraints {
            min_mtu: 1500,
            vertex_ok: &no_n3,
            link_ok: &l,
        };
        assert!(g.shortest(0, 3, &c).is_none());
    }

    #[test]
    fn alternatives_are_ordered_and_distinct() {
        let t = topo(
            4,
            &[
                (0, 1, 1, 1500, true),
                (1, 3, 1, 1500, true),
                (0, 2, 2, 1500, true),
                (2, 3, 2, 1500, true),
            ],
        );
        let g = Graph::build(&t);
        let (v, l) = allow_all();
        let c = Constraints {
            min_mtu: 0,
            vertex_ok: &v,
            link_ok: &l,
        };
        let alts = g.alternatives(0, 3, 3, &c);
        assert_eq!(alts.len(), 2);
        assert_eq!(alts[0].vertices, vec![0, 1, 3]);
        assert_eq!(alts[1].vertices, vec![0, 2, 3]);
        assert_eq!(alts[1].links.len(), 2);
    }

    proptest! {
        /// Our Dijkstra agrees with pathfinding's on random graphs, and paths are real walks.
        #[test]
        fn agrees_with_reference(n in 2usize..12, raw in proptest::collection::vec((0usize..12, 0usize..12, 1u32..20, any::<bool>()), 0..30)) {
            let edges: Vec<_> = raw.into_iter().filter(|(a, b, _, _)| a < &n && b < &n && a != b).map(|(a, b, c, up)| (a, b, c, 1500, up)).collect();
            let t = topo(n, &edges);
            let g = Graph::build(&t);
            let (v, l) = allow_all();
            let c = Constraints { min_mtu: 0, vertex_ok: &v, link_ok: &l };
            for to in 0..n {
                let ours = g.shortest(0, to, &c);
                let reference = pathfinding::directed::dijkstra::dijkstra(
                    &0usize,
                    |&x| g.adj[x].iter().filter(|e| g.links[e.1 as usize].up).map(|e| (e.0 as usize, u64::from(g.links[e.1 as usize].cost))).collect::<Vec<_>>(),
                    |&x| x == to,
                );
                prop_assert_eq!(ours.as_ref().map(|p| p.cost), reference.map(|r| r.1));
                if let Some(p) = ours {
                    prop_assert_eq!(p.vertices.len(), p.links.len() + 1);
                    for (i, &link) in p.links.iter().enumerate() {
                        let li = &t.links[g.link_name(link)];
                        let (a, b) = (g.name(p.vertices[i]), g.name(p.vertices[i + 1]));
                        prop_assert!(li.up && li.other(a) == Some(b));
                    }
                }
            }
        }
    }
}
