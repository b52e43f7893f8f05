//! NETCONF messages as XML text (RFC 6241). Sans-IO: builders return strings, parsers take
//! bytes. Replies are matched by `message-id`; `<rpc-error>`s become typed [`RpcError`]s carrying
//! the error-tag, path and message the device gave.

use std::fmt::Write as _;

pub const BASE_NS: &str = "urn:ietf:params:xml:ns:netconf:base:1.0";
pub const BASE_1_0: &str = "urn:ietf:params:netconf:base:1.0";
pub const BASE_1_1: &str = "urn:ietf:params:netconf:base:1.1";
pub const CANDIDATE: &str = "urn:ietf:params:netconf:capability:candidate:1.0";
pub const CONFIRMED_COMMIT: &str = "urn:ietf:params:netconf:capability:confirmed-commit:1.1";
pub const VALIDATE: &str = "urn:ietf:params:netconf:capability:validate:1.1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("not well-formed XML: {0}")]
    Malformed(String),
    #[error("expected <{expected}>, got <{got}>")]
    Unexpected { expected: &'static str, got: String },
    #[error("{0}")]
    Missing(&'static str),
}

/// One `<rpc-error>` (RFC 6241 section 4.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcError {
    pub error_type: String,
    pub tag: String,
    pub severity: String,
    pub app_tag: Option<String>,
    pub path: Option<String>,
    pub message: Option<String>,
    /// `<error-info>` children as `name=value`.
    pub info: Vec<(String, String)>,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.error_type, self.tag)?;
        if let Some(p) = &self.path {
            write!(f, " at {p}")?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        for (k, v) in &self.info {
            write!(f, " ({k}={v})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub capabilities: Vec<String>,
    pub session_id: Option<u32>,
}

impl Hello {
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c == capability || c.split('?').next() == Some(capability))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    Ok,
    /// The inner XML of `<data>`.
    Data(String),
    /// Errors (warnings are kept too; `errors()` says whether any is an error).
    Errors(Vec<RpcError>),
    /// Anything else, as XML.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message_id: String,
    pub body: ReplyBody,
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Our `<hello>`: base 1.0 and 1.1.
pub fn hello() -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><hello xmlns=\"{BASE_NS}\"><capabilities><capability>{BASE_1_0}</capability><capability>{BASE_1_1}</capability></capabilities></hello>"
    )
}

/// `<rpc message-id=..>body</rpc>`.
pub fn rpc(message_id: u64, body: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><rpc xmlns=\"{BASE_NS}\" message-id=\"{message_id}\">{body}</rpc>")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datastore {
    Running,
    Candidate,
    Startup,
}

impl Datastore {
    fn tag(self) -> &'static str {
        match self {
            Datastore::Running => "<running/>",
            Datastore::Candidate => "<candidate/>",
            Datastore::Startup => "<startup/>",
        }
    }
}

/// `default-operation` of edit-config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultOperation {
    Merge,
    Replace,
    None,
}

/// The operations of RFC 6241 Meshwire uses, as `<rpc>` bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Get {
        filter: Option<String>,
    },
    GetConfig {
        source: Datastore,
        filter: Option<String>,
    },
    /// `config` is the inner XML of `<config>`; per-element `nc:operation` (merge, replace,
    /// delete, remove, create) goes in it.
    EditConfig {
        target: Datastore,
        default_operation: DefaultOperation,
        config: String,
    },
    Validate {
        source: Datastore,
    },
    /// `confirm_timeout`: a confirmed commit rolled back unless confirmed within that many
    /// seconds; `persist`: a token to confirm or cancel it from another session.
    Commit {
        confirm_timeout: Option<u32>,
        persist: Option<String>,
    },
    CancelCommit {
        persist_id: Option<String>,
    },
    DiscardChanges,
    Lock {
        target: Datastore,
    },
    Unlock {
        target: Datastore,
    },
    CloseSession,
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Get { .. } => "get",
            Operation::GetConfig { .. } => "get-config",
            Operation::EditConfig { .. } => "edit-config",
            Operation::Validate { .. } => "validate",
            Operation::Commit { .. } => "commit",
            Operation::CancelCommit { .. } => "cancel-commit",
            Operation::DiscardChanges => "discard-changes",
            Operation::Lock { .. } => "lock",
            Operation::Unlock { .. } => "unlock",
            Operation::CloseSession => "close-session",
        }
    }

    /// The XML inside `<rpc>`.
    pub fn body(&self) -> String {
        let filter = |f: &Option<String>| {
            f.as_ref()
                .map(|f| format!("<filter type=\"subtree\">{f}</filter>"))
                .unwrap_or_default()
        };
        match self {
            Operation::Get { filter: f } => format!("<get>{}</get>", filter(f)),
            Operation::GetConfig { source, filter: f } => format!(
                "<get-config><source>{}</source>{}</get-config>",
                source.tag(),
                filter(f)
            ),
            Operation::EditConfig {
                target,
                default_operation,
                config,
            } => {
                let op = match default_operation {
                    DefaultOperation::Merge => "merge",
                    DefaultOperation::Replace => "replace",
                    DefaultOperation::None => "none",
                };
                format!("<edit-config><target>{}</target><default-operation>{op}</default-operation><test-option>test-then-set</test-option><error-option>rollback-on-error</error-option><config>{config}</config></edit-config>", target.tag())
            }
            Operation::Validate { source } => {
                format!("<validate><source>{}</source></validate>", source.tag())
            }
            Operation::Commit {
                confirm_timeout,
                persist,
            } => {
                let mut s = String::from("<commit>");
                if let Some(t) = confirm_timeout {
                    let _ = write!(s, "<confirmed/><confirm-timeout>{t}</confirm-timeout>");
                }
                if let Some(p) = persist {
                    let _ = write!(s, "<persist>{}</persist>", escape(p));
                }
                s.push_str("</commit>");
                s
            }
            Operation::CancelCommit { persist_id } => match persist_id {
                Some(p) => format!(
                    "<cancel-commit><persist-id>{}</persist-id></cancel-commit>",
                    escape(p)
                ),
                None => "<cancel-commit/>".into(),
            },
            Operation::DiscardChanges => "<discard-changes/>".into(),
            Operation::Lock { target } => format!("<lock><target>{}</target></lock>", target.tag()),
            Operation::Unlock { target } => {
                format!("<unlock><target>{}</target></unlock>", target.tag())
            }
            Operation::CloseSession => "<close-session/>".into(),
        }
    }
}

fn parse(bytes: &[u8]) -> Result<(String, usize), XmlError> {
    let text = std::str::from_utf8(bytes).map_err(|e| XmlError::Malformed(e.to_string()))?;
    // roxmltree wants no leading whitespace before the declaration.
    let trimmed = text.trim_start();
    Ok((trimmed.to_string(), text.len() - trimmed.len()))
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text_of(n: roxmltree::Node, name: &str) -> Option<String> {
    child(n, name).map(|c| c.text().unwrap_or("").trim().to_string())
}

/// The XML text inside `n` (its children, serialized as they appear in the input).
fn inner_xml(src: &str, n: roxmltree::Node) -> String {
    let r = n.range();
    let outer = &src[r.start..r.end];
    match (outer.find('>'), outer.rfind("</")) {
        (Some(open), Some(close)) if close > open && !outer[..open].ends_with('/') => {
            outer[open + 1..close].to_string()
        }
        _ => String::new(),
    }
}

pub fn parse_hello(bytes: &[u8]) -> Result<Hello, XmlError> {
    let (text, _) = parse(bytes)?;
    let doc = roxmltree::Document::parse(&text).map_err(|e| XmlError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "hello" {
        return Err(XmlError::Unexpected {
            expected: "hello",
            got: root.tag_name().name().to_string(),
        });
    }
    let caps =
        child(root, "capabilities").ok_or(XmlError::Missing("hello without capabilities"))?;
    let capabilities = caps
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "capability")
        .map(|c| c.text().unwrap_or("").trim().to_string())
        .collect();
    let session_id = text_of(root, "session-id").and_then(|s| s.parse().ok());
    Ok(Hello {
        capabilities,
        session_id,
    })
}

pub fn parse_reply(bytes: &[u8]) -> Result<Reply, XmlError> {
    let (text, _) = parse(bytes)?;
    let doc = roxmltree::Document::parse(&text).map_err(|e| XmlError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "rpc-reply" {
        return Err(XmlError::Unexpected {
            expected: "rpc-reply",
            got: root.tag_name().name().to_string(),
        });
    }
    let message_id = root
        .attribute("message-id")
        .ok_or(XmlError::Missing("rpc-reply without message-id"))?
        .to_string();
    let errors: Vec<RpcError> = root
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "rpc-error")
        .map(|e| RpcError {
            error_type: text_of(e, "error-type").unwrap_or_default(),
            tag: text_of(e, "error-tag").unwrap_or_default(),
            severity: text_of(e, "error-severity").unwrap_or_else(|| "error".into()),
            app_tag: text_of(e, "error-app-tag"),
            path: text_of(e, "error-path"),
            message: text_of(e, "error-message"),
            info: child(e, "error-info")
                .map(|i| {
                    i.children()
                        .filter(|c| c.is_element())
                        .map(|c| {
                            (
                                c.tag_name().name().to_string(),
                                c.text().unwrap_or("").trim().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let body = if errors.iter().any(|e| e.severity != "warning") {
        ReplyBody::Errors(errors)
    } else if child(root, "ok").is_some() {
        ReplyBody::Ok
    } else if let Some(d) = child(root, "data") {
        ReplyBody::Data(inner_xml(&text, d))
    } else {
        ReplyBody::Other(inner_xml(&text, root))
    };
    Ok(Reply { message_id, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_replies_parse() {
        let h = parse_hello(
            br#"<?xml version="1.0" encoding="UTF-8"?>
<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities>
<capability>urn:ietf:params:netconf:base:1.1</capability>
<capability>urn:ietf:params:netconf:capability:candidate:1.0</capability>
<capability>urn:ietf:params:netconf:capability:confirmed-commit:1.1</capability>
</capabilities><session-id>4</session-id></hello>"#,
        )
        .unwrap();
        assert!(h.has(BASE_1_1) && h.has(CANDIDATE) && h.has(CONFIRMED_COMMIT));
        assert_eq!(h.session_id, Some(4));

        let r = parse_reply(br#"<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="7"><ok/></rpc-reply>"#).unwrap();
        assert_eq!((r.message_id.as_str(), r.body), ("7", ReplyBody::Ok));

        let r = parse_reply(br#"<rpc-reply message-id="8" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><data><interfaces xmlns="urn:ietf:params:xml:ns:yang:ietf-interfaces"><interface><name>eth0</name></interface></interfaces></data></rpc-reply>"#).unwrap();
        match r.body {
            ReplyBody::Data(d) => assert!(
                d.starts_with("<interfaces") && d.contains("<name>eth0</name>"),
                "{d}"
            ),
            other => panic!("{other:?}"),
        }

        // RFC 6241 section 4.3 example.
        let r = parse_reply(br#"<rpc-reply message-id="101" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" xmlns:xc="urn:ietf:params:xml:ns:netconf:base:1.0">
  <rpc-error>
    <error-type>application</error-type>
    <error-tag>invalid-value</error-tag>
    <error-severity>error</error-severity>
    <error-path xmlns:t="http://example.com/schema/1.2/config">/t:top/t:interface[t:name="Ethernet0/0"]/t:mtu</error-path>
    <error-message xml:lang="en">MTU value 25000 is not within range 256..9192</error-message>
    <error-info><bad-element>mtu</bad-element></error-info>
  </rpc-error>
</rpc-reply>"#).unwrap();
        let ReplyBody::Errors(e) = r.body else {
            panic!()
        };
        assert_eq!(e[0].tag, "invalid-value");
        assert_eq!(e[0].to_string(), "application invalid-value at /t:top/t:interface[t:name=\"Ethernet0/0\"]/t:mtu: MTU value 25000 is not within range 256..9192 (bad-element=mtu)");
        assert!(parse_reply(b"<rpc-reply><ok/>").is_err());
        assert!(matches!(
            parse_reply(b"<hello/>"),
            Err(XmlError::Unexpected { .. })
        ));
    }

    #[test]
    fn operations_render() {
        let c = Operation::Commit {
            confirm_timeout: Some(30),
            persist: Some("a<b".into()),
        };
        assert_eq!(c.body(), "<commit><confirmed/><confirm-timeout>30</confirm-timeout><persist>a&lt;b</persist></commit>");
        assert!(rpc(
            5,
            &Operation::Lock {
                target: Datastore::Candidate
            }
            .body()
        )
        .contains("message-id=\"5\"><lock><target><candidate/></target></lock></rpc>"));
        let e = Operation::EditConfig {
            target: Datastore::Candidate,
            default_operation: DefaultOperation::Merge,
            config: "<x/>".into(),
        };
        assert!(e.body().contains("<config><x/></config>"));
    }
}
