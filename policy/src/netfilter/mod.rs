//! Netfilter rules that let mail, LDAP, DNS and Kerberos pass directly while web traffic must
//! use the proxy.
//!
//! Hand-written iptables scripts for this go wrong in known ways: wrong port labels, IMAP 143
//! forgotten, and "iptables cannot take all ports at once" because multiport takes at most 15
//! ports. Here one typed description ([`NetfilterConfig`], the `[netfilter]` config section) is
//! validated once ([`compile`]) and rendered for nftables ([`nft::render`]) or
//! iptables-restore ([`iptables::render`]). Everything is text generation from facts; running
//! `nft` or `iptables-restore` is the caller's business (`portcullis netfilter apply`).
//!
//! Outlook over HTTPS (MAPI over HTTP, RPC over HTTP) through the proxy is the better fix for
//! Outlook across NAT; the one-to-one NAT option exists only for legacy RPC/TCP clients (see
//! [`OUTLOOK_NOTE`]).

mod compile;
mod intercept;
pub mod iptables;
mod model;
pub mod nft;
mod services;
mod spec;

pub use compile::{compile, CompileError};
pub use model::{
    ChainPolicy, DirectRule, InterceptConfig, Mode, NetfilterConfig, OneToOneNat, PortSpec,
    ProxyUser, ServiceDef, WebAction,
};
pub use services::{
    builtin_group, builtin_service, BuiltinGroup, BuiltinService, BUILTIN_GROUPS, BUILTIN_SERVICES,
};
pub use spec::{
    scope, Direct, Family, Intercept, Lan, Nat, NetfilterFacts, NetfilterSpec, PortEntry, PortSet,
    Proto, Web,
};

/// Name of our nftables table (family `inet`, so one table covers IPv4 and IPv6).
pub const TABLE: &str = "portcullis";

/// Written at the top of every rendered file, because the file is what admins read.
pub const OUTLOOK_NOTE: &str = "\
Outlook and Exchange: let Outlook use HTTPS (MAPI over HTTP, or RPC over HTTP / Outlook
Anywhere) through the proxy. That is the better fix for Outlook across NAT. Classic RPC/TCP
(endpoint mapper 135 plus dynamic ports) carries IP addresses inside the protocol, which
port-translating NAT does not rewrite, so it fails across NAT. Microsoft's documented
workaround (KB 291615) is one-to-one NAT for the Exchange server: `one_to_one_nat` renders
DNAT public->private plus SNAT back. Use it only for clients that cannot use HTTPS.";
