//! Label sets, as on NSM endpoints, requests and selectors.
//!
//! [`Labels`] is a map kept as a sorted vector: label sets have a handful of entries, and a
//! one-label `BTreeMap` costs a 540-byte node, which dominated the memory of a live connection.
//! It serializes as a JSON/YAML map, like upstream.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of `key=value` labels, ordered by key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn new() -> Self {
        Labels(Vec::new())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Labels {
    /// From pairs in any order, the last value of a repeated key winning: one stable sort,
    /// O(n log n), where inserting one by one into the sorted vector would be O(n²) (a 4 MiB
    /// body holds some 200,000 labels).
    fn from_pairs(mut v: Vec<(String, String)>) -> Labels {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(v.len());
        for (k, val) in v {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = val,
                _ => out.push((k, val)),
            }
        }
        out.shrink_to_fit();
        Labels(out)
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Labels::from_pairs(iter.into_iter().collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = String;
    fn index(&self, key: &str) -> &String {
        self.get(key).unwrap_or_else(|| panic!("no label {key:?}"))
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl IntoIterator for Labels {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of label names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(kv) = map.next_entry::<String, String>()? {
                    pairs.push(kv);
                }
                Ok(Labels::from_pairs(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses `key=value` into a pair; the key must be non-empty.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("label {text:?} is not of the form key=value")),
    }
}

/// Formats labels as `k=v,k2=v2` (empty labels print as `-`).
pub fn format_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Labels {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .description(Some("Labels: names to string values."))
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Labels {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Behaves like a BTreeMap, and serializes like one.
        #[test]
        fn like_a_btreemap(ops in proptest::collection::vec(("[a-d]", "[x-z]{0,2}", any::<bool>()), 0..40)) {
            let mut ours = Labels::new();
            let mut reference = std::collections::BTreeMap::new();
            for (k, v, insert) in ops {
                if insert {
                    prop_assert_eq!(ours.insert(k.clone(), v.clone()), reference.insert(k, v));
                } else {
                    prop_assert_eq!(ours.remove(&k), reference.remove(&k));
                }
            }
            prop_assert_eq!(ours.iter().collect::<Vec<_>>(), reference.iter().collect::<Vec<_>>());
            prop_assert_eq!(serde_json::to_string(&ours).unwrap(), serde_json::to_string(&reference).unwrap());
            let back: Labels = serde_json::from_str(&serde_json::to_string(&reference).unwrap()).unwrap();
            prop_assert_eq!(&back, &ours);
            let collected: Labels = ours.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(collected, ours);
        }

        /// A repeated key keeps its last value, as a map built in order would.
        #[test]
        fn repeated_keys_keep_the_last(pairs in proptest::collection::vec(("[a-c]", "[x-z]"), 0..30)) {
            let mut reference = std::collections::BTreeMap::new();
            for (k, v) in &pairs {
                reference.insert(k.clone(), v.clone());
            }
            let ours: Labels = pairs.into_iter().collect();
            prop_assert_eq!(ours.iter().collect::<Vec<_>>(), reference.iter().collect::<Vec<_>>());
        }
    }
}
