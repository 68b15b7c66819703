//! One finished transaction as the access log and the metrics see it: [`Record`], with its
//! outcome as enums ([`ResultCode`], [`Hierarchy`], [`Channel`]) rather than Squid's strings,
//! so the formatters print them and the metrics label them without matching text.
//!
//! Both `access_log` and `metrics` import this module; neither imports the other's types.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use portcullis_policy::ExchangeClass;

use crate::original_dst::TransparentKind;
use serde::{Serialize, Serializer};

/// Squid's result code (`%Ss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultCode {
    /// Forwarded to the origin (Squid has no cache hit here: we do not cache).
    TcpMiss,
    /// A CONNECT tunnel or upgraded connection relayed as bytes.
    TcpTunnel,
    /// Refused: by policy, by authentication (407), by a port or network rule.
    TcpDenied,
    /// Answered by the proxy itself, an intercepted CONNECT, or a request that could not be
    /// parsed.
    None,
    /// An intercepted CONNECT that failed on the proxy's side before its first request (no
    /// certificate could be minted). Squid 4+ writes an untagged transaction `NONE_NONE`.
    NoneNone,
    /// An intercepted CONNECT whose client refused or left the handshake (Squid's `_ABORTED`).
    NoneAborted,
    /// An intercepted CONNECT whose client did not finish the handshake in time (Squid's
    /// `_TIMEDOUT`).
    NoneTimedOut,
}

impl ResultCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResultCode::TcpMiss => "TCP_MISS",
            ResultCode::TcpTunnel => "TCP_TUNNEL",
            ResultCode::TcpDenied => "TCP_DENIED",
            ResultCode::None => "NONE",
            ResultCode::NoneNone => "NONE_NONE",
            ResultCode::NoneAborted => "NONE_NONE_ABORTED",
            ResultCode::NoneTimedOut => "NONE_NONE_TIMEDOUT",
        }
    }
}

/// Squid's hierarchy code (`%Sh`): whether an origin was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hierarchy {
    /// An origin connection carried the transaction.
    Direct,
    /// Answered without an origin (error pages, 407, the proxy's own pages).
    None,
    /// A transparently intercepted connection's origin: its original destination (Squid's
    /// `ORIGINAL_DST`), whatever name the client gave.
    OriginalDst,
    /// Through a parent proxy, the first one up of a failover route (issue 19).
    FirstUpParent,
    /// Through the one parent proxy of its route (issue 19).
    DefaultParent,
}

impl Hierarchy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Hierarchy::Direct => "HIER_DIRECT",
            Hierarchy::None => "HIER_NONE",
            Hierarchy::OriginalDst => "ORIGINAL_DST",
            Hierarchy::FirstUpParent => "FIRSTUP_PARENT",
            Hierarchy::DefaultParent => "DEFAULT_PARENT",
        }
    }
}

/// How a transaction travelled through the proxy, set where it enters a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// A plain HTTP request (absolute-form, or for the proxy itself), or a connection-level
    /// error before any request.
    Plain,
    /// A CONNECT whose bytes are relayed untouched (or that failed before its tunnel began).
    Tunnel,
    /// A CONNECT whose TLS was intercepted, and each request decrypted from it.
    Inspected,
}

/// What the proxy did with a transaction: the `decision` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Intercepted and inspected (the CONNECT, and each decrypted request).
    Inspect,
    /// A CONNECT tunnel relayed as opaque bytes.
    Tunnel,
    /// Refused by policy or authentication (Squid's `TCP_DENIED`).
    Deny,
    /// A plain HTTP request forwarded (or answered by the proxy itself).
    Plain,
}

impl Disposition {
    pub(crate) const ALL: [Disposition; 4] = [
        Disposition::Inspect,
        Disposition::Tunnel,
        Disposition::Deny,
        Disposition::Plain,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Disposition::Inspect => "inspect",
            Disposition::Tunnel => "tunnel",
            Disposition::Deny => "deny",
            Disposition::Plain => "plain",
        }
    }
}

/// One finished transaction (a request, or a whole CONNECT tunnel).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Record {
    /// Completion time.
    #[serde(skip)]
    pub(crate) time: SystemTime,
    pub(crate) elapsed_ms: u64,
    pub(crate) client: IpAddr,
    #[serde(serialize_with = "as_str_result")]
    pub(crate) result: ResultCode,
    pub(crate) status: u16,
    /// Bytes sent to the client (response body, or both directions' payload for a tunnel's
    /// client side).
    pub(crate) bytes: u64,
    /// Bytes received from the client (request body, or a tunnel's client→origin payload).
    pub(crate) bytes_in: u64,
    pub(crate) method: String,
    pub(crate) url: String,
    pub(crate) user: Option<String>,
    /// The user's groups as the proxy resolved them (`[auth.groups]`), at most
    /// [`MAX_LOGGED_GROUPS`] of them; absent when no group source is configured.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "bounded_groups"
    )]
    pub(crate) groups: Option<Arc<[String]>>,
    #[serde(serialize_with = "as_str_hierarchy")]
    pub(crate) hierarchy: Hierarchy,
    pub(crate) peer: Option<IpAddr>,
    pub(crate) content_type: Option<String>,
    /// The `X-Portcullis-Error` cause when the proxy produced an error.
    pub(crate) error: Option<&'static str>,
    #[serde(skip)]
    pub(crate) channel: Channel,
    /// What the policy decided; `None` for the proxy's own pages and requests refused before
    /// the policy ran (malformed, 407 challenges).
    #[serde(flatten)]
    pub(crate) policy: Option<PolicyNote>,
    /// Set for transactions from a transparent listener: the JSON log's `listener` and the
    /// metrics' `listener` label.
    #[serde(
        rename = "listener",
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_str_listener"
    )]
    pub(crate) transparent: Option<TransparentKind>,
    /// What each ICAP service made of this transaction (JSON log: `icap`), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) icap: Vec<crate::icap::IcapNote>,
}

impl Record {
    /// The `decision` label: refusals are `deny` whatever the channel.
    pub(crate) fn disposition(&self) -> Disposition {
        if self.result == ResultCode::TcpDenied {
            return Disposition::Deny;
        }
        match self.channel {
            Channel::Plain => Disposition::Plain,
            Channel::Tunnel => Disposition::Tunnel,
            Channel::Inspected => Disposition::Inspect,
        }
    }

    /// Whether bytes moved between the proxy and an origin (the upstream byte counters).
    pub(crate) fn reached_origin(&self) -> bool {
        self.hierarchy != Hierarchy::None
    }
}

fn as_str_result<S: Serializer>(code: &ResultCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(code.as_str())
}

/// A log line names at most this many groups, so a user in hundreds of directory groups does
/// not make every line kilobytes long.
pub(crate) const MAX_LOGGED_GROUPS: usize = 32;

fn bounded_groups<S: Serializer>(groups: &Option<Arc<[String]>>, s: S) -> Result<S::Ok, S::Error> {
    let groups = groups.as_deref().unwrap_or_default();
    s.collect_seq(groups.iter().take(MAX_LOGGED_GROUPS))
}

fn as_str_hierarchy<S: Serializer>(code: &Hierarchy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(code.as_str())
}

fn as_str_listener<S: Serializer>(kind: &Option<TransparentKind>, s: S) -> Result<S::Ok, S::Error> {
    match kind {
        Some(kind) => s.serialize_str(kind.as_str()),
        None => s.serialize_none(),
    }
}

fn as_str_exchange<S: Serializer>(class: &Option<ExchangeClass>, s: S) -> Result<S::Ok, S::Error> {
    match class {
        Some(class) => s.serialize_str(class.as_str()),
        None => s.serialize_none(),
    }
}

/// The policy's decision as the access log and metrics see it: an operator can tell "tunnelled
/// by the Outlook profile" from "inspected by default".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PolicyNote {
    /// `inspect`, `tunnel` or `deny`.
    pub(crate) action: &'static str,
    /// The rule that decided: its `name`, `rules[3]`, `outlook:…`, `default`.
    pub(crate) rule: Arc<str>,
    /// The Exchange protocol of the request (autodiscover, mapi, rpc-http, ews, eas, oab): the
    /// JSON log's `exchange` and the metrics' `exchange` label.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_str_exchange"
    )]
    pub(crate) exchange: Option<ExchangeClass>,
    /// The rule's `log_tag`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tag: Option<Arc<str>>,
}

impl PolicyNote {
    pub(crate) fn new(decision: &portcullis_policy::Decision) -> PolicyNote {
        PolicyNote {
            action: decision.action.as_str(),
            // Shared with the compiled policy: no allocation per request.
            rule: Arc::clone(&decision.rule.name),
            exchange: decision.class,
            tag: decision.tag.clone(),
        }
    }

    /// The note for a tunnel relayed untouched because this client refused interception of
    /// this host lately (`tls.tunnel_after_refusal`): `tunnel/refusal:<the rule that said
    /// inspect>`, so the line shows both what happened and which decision it overrode.
    pub(crate) fn after_refusal(&self) -> PolicyNote {
        PolicyNote {
            action: "tunnel",
            rule: format!("refusal:{}", self.rule).into(),
            exchange: self.exchange,
            tag: self.tag.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(result: ResultCode, channel: Channel) -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH,
            elapsed_ms: 0,
            client: IpAddr::from([127, 0, 0, 1]),
            result,
            status: 200,
            bytes: 0,
            bytes_in: 0,
            method: "GET".into(),
            url: String::new(),
            user: None,
            groups: None,
            hierarchy: Hierarchy::None,
            peer: None,
            content_type: None,
            error: None,
            channel,
            policy: None,
            transparent: None,
            icap: Vec::new(),
        }
    }

    /// Every result code on every channel maps to exactly one metric label, and a refusal is
    /// `deny` whichever way it came.
    #[test]
    fn each_outcome_has_one_metric_label() {
        use Channel::*;
        use ResultCode::*;
        let table = [
            (TcpMiss, Plain, "plain"),
            (None, Plain, "plain"),
            (TcpDenied, Plain, "deny"),
            (TcpTunnel, Tunnel, "tunnel"),
            (TcpMiss, Tunnel, "tunnel"),
            (TcpDenied, Tunnel, "deny"),
            (None, Inspected, "inspect"),
            (TcpMiss, Inspected, "inspect"),
            (TcpDenied, Inspected, "deny"),
            // A failed interception is still an inspected tunnel; its cause is the `error`.
            (NoneNone, Inspected, "inspect"),
            (NoneAborted, Inspected, "inspect"),
            (NoneTimedOut, Inspected, "inspect"),
        ];
        for (result, channel, label) in table {
            assert_eq!(
                record(result, channel).disposition().as_str(),
                label,
                "{result:?} on {channel:?}"
            );
        }
        let labels: Vec<_> = Disposition::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(labels, ["inspect", "tunnel", "deny", "plain"]);
    }

    #[test]
    fn a_refusal_tunnel_names_the_rule_it_overrode() {
        let inspect = PolicyNote {
            action: "inspect",
            rule: Arc::from("default"),
            exchange: Option::None,
            tag: Some(Arc::from("web")),
        };
        let note = inspect.after_refusal();
        assert_eq!((note.action, &*note.rule), ("tunnel", "refusal:default"));
        assert_eq!(note.tag.as_deref(), Some("web"));
    }

    #[test]
    fn codes_print_as_squid_writes_them() {
        let codes = [
            (ResultCode::TcpMiss, "TCP_MISS"),
            (ResultCode::TcpTunnel, "TCP_TUNNEL"),
            (ResultCode::TcpDenied, "TCP_DENIED"),
            (ResultCode::None, "NONE"),
            (ResultCode::NoneNone, "NONE_NONE"),
            (ResultCode::NoneAborted, "NONE_NONE_ABORTED"),
            (ResultCode::NoneTimedOut, "NONE_NONE_TIMEDOUT"),
        ];
        for (code, text) in codes {
            assert_eq!(code.as_str(), text);
        }
        assert_eq!(Hierarchy::Direct.as_str(), "HIER_DIRECT");
        assert_eq!(Hierarchy::None.as_str(), "HIER_NONE");
        assert_eq!(Hierarchy::OriginalDst.as_str(), "ORIGINAL_DST");
        assert_eq!(Hierarchy::FirstUpParent.as_str(), "FIRSTUP_PARENT");
        assert_eq!(Hierarchy::DefaultParent.as_str(), "DEFAULT_PARENT");
        let mut r = record(ResultCode::TcpDenied, Channel::Plain);
        r.hierarchy = Hierarchy::Direct;
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["result"], "TCP_DENIED");
        assert_eq!(json["hierarchy"], "HIER_DIRECT");
        assert!(json.get("channel").is_none());
        assert!(
            json.get("listener").is_none(),
            "only transparent lines name it"
        );
        r.transparent = Some(TransparentKind::Tls);
        r.hierarchy = Hierarchy::OriginalDst;
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["listener"], "transparent_tls");
        assert_eq!(json["hierarchy"], "ORIGINAL_DST");
    }
}
