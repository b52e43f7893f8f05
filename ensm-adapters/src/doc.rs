//! The envelope the eNSM's own files share (`apiVersion`, `kind`, `metadata.name`, `spec`),
//! read and checked in one place.

use serde::de::DeserializeOwned;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw<S> {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: S,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    name: String,
}

/// Parses `text` as a `meshwire.io/v1` document of `kind`: its name and spec, or why not.
pub(crate) fn parse<S: DeserializeOwned>(text: &str, kind: &str) -> Result<(String, S), String> {
    let raw: Raw<S> = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    if raw.api_version != "meshwire.io/v1" || raw.kind != kind {
        return Err(format!(
            "expected apiVersion meshwire.io/v1 and kind {kind}, got {} {}",
            raw.api_version, raw.kind
        ));
    }
    Ok((raw.metadata.name, raw.spec))
}
