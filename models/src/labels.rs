//! Label sets, as on NSM endpoints, requests and selectors.

use std::collections::BTreeMap;

/// A set of `key=value` labels. Ordered, so it prints and serializes the same way every time.
pub type Labels = BTreeMap<String, String>;

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
