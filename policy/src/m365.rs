//! The Microsoft 365 IP/URL web service (`endpoints.office.com`): parsing its JSON and turning
//! the chosen endpoint sets into tunnel / auth-exempt rules.
//!
//! Only the pure half lives here: fetching, caching and 429 back-off belong to the proxy, which
//! hands the parsed sets to [`crate::Policy::compile_with_m365`]. Schema: OUTLOOK.md §4.2.
//!
//! The feed types do not reject unknown fields, unlike the config: Microsoft adds fields
//! (`serviceAreaDisplayName` appeared after the field list was written), and a new field must not
//! stop the proxy from refreshing its exemptions.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::config::M365Category;
use crate::error::CompileError;
use crate::host::HostPattern;

/// Service areas the feed knows (`ServiceAreas=` parameter).
pub const SERVICE_AREAS: &[&str] = &["Common", "Exchange", "SharePoint", "Skype"];

/// One record of `GET /endpoints/<Instance>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSet {
    /// Immutable endpoint-set id; names the generated rules (`m365:<id>:hosts`).
    pub id: u32,
    /// `Common`, `Exchange`, `SharePoint` or `Skype`.
    pub service_area: String,
    #[serde(default)]
    pub service_area_display_name: Option<String>,
    /// FQDNs and wildcards (`*.outlook.com`, `autodiscover.*.onmicrosoft.com`).
    #[serde(default)]
    pub urls: Vec<String>,
    /// CIDRs, IPv4 and IPv6.
    #[serde(default)]
    pub ips: Vec<String>,
    /// `"80,443"`, ranges with `-`.
    #[serde(default)]
    pub tcp_ports: Option<String>,
    #[serde(default)]
    pub udp_ports: Option<String>,
    pub category: M365Category,
    #[serde(default)]
    pub express_route: bool,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub notes: Option<String>,
}

/// One record of `GET /version[/<Instance>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// `Worldwide`, `China`, `USGovDoD`, `USGovGCCHigh`, …
    pub instance: String,
    /// `YYYYMMDDNN`; a change means the endpoint list should be fetched again.
    pub latest: String,
    /// Only with `AllVersions=true`.
    #[serde(default)]
    pub versions: Vec<String>,
}

/// Parses the answer of `GET /endpoints/<Instance>`.
pub fn parse_endpoints(json: &str) -> Result<Vec<EndpointSet>, CompileError> {
    serde_json::from_str(json).map_err(|e| feed("endpoints", e))
}

/// Parses the answer of `GET /version` (an array, one per instance) or `GET /version/<Instance>`
/// (one object), checking the `YYYYMMDDNN` version format.
pub fn parse_versions(json: &str) -> Result<Vec<VersionInfo>, CompileError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(VersionInfo),
        Many(Vec<VersionInfo>),
    }
    let all = match serde_json::from_str(json).map_err(|e| feed("version", e))? {
        OneOrMany::One(v) => vec![v],
        OneOrMany::Many(v) => v,
    };
    for v in &all {
        for version in std::iter::once(&v.latest).chain(&v.versions) {
            if version.len() != 10 || !version.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CompileError::Feed {
                    document: "version",
                    reason: format!("{}: version {version:?} is not YYYYMMDDNN", v.instance),
                });
            }
        }
    }
    Ok(all)
}

fn feed(document: &'static str, e: serde_json::Error) -> CompileError {
    CompileError::Feed {
        document,
        reason: e.to_string(),
    }
}

/// A feed value that could not be turned into a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub id: u32,
    pub value: String,
    pub reason: String,
}

/// The usable part of one selected endpoint set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSet {
    pub id: u32,
    pub hosts: Vec<HostPattern>,
    pub networks: Vec<IpNet>,
    pub tcp_ports: Vec<RangeInclusive<u16>>,
}

/// The sets chosen by service area and category.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub sets: Vec<FeedSet>,
    pub skipped: Vec<Skipped>,
}

/// Keeps the sets whose service area (case-insensitively) and category are wanted and that
/// carry TCP ports (UDP-only sets never reach an HTTP proxy). Unusable values are reported in
/// [`Selection::skipped`], the rest of their set is kept.
pub fn select(sets: &[EndpointSet], areas: &[String], categories: &[M365Category]) -> Selection {
    let mut out = Selection::default();
    for set in sets {
        let area_wanted = areas
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&set.service_area));
        if !area_wanted || !categories.contains(&set.category) {
            continue;
        }
        let Some(tcp) = set.tcp_ports.as_deref().filter(|t| !t.trim().is_empty()) else {
            continue;
        };
        let mut skip = |value: &str, reason: &str| {
            out.skipped.push(Skipped {
                id: set.id,
                value: value.to_owned(),
                reason: reason.to_owned(),
            })
        };
        let mut tcp_ports = Vec::new();
        for part in tcp.split(',') {
            match parse_port_range(part) {
                Some(r) => tcp_ports.push(r),
                None => skip(part, "not a port or port range"),
            }
        }
        if tcp_ports.is_empty() {
            continue;
        }
        let mut hosts = Vec::new();
        for url in &set.urls {
            match url_pattern(url) {
                Ok(p) => hosts.push(p),
                Err(reason) => skip(url, &reason),
            }
        }
        let mut networks = Vec::new();
        for ip in &set.ips {
            match ip
                .parse::<IpNet>()
                .or_else(|_| ip.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(n) => networks.push(n),
                Err(_) => skip(ip, "not a CIDR"),
            }
        }
        out.sets.push(FeedSet {
            id: set.id,
            hosts,
            networks,
            tcp_ports,
        });
    }
    out
}

/// A feed URL as a host pattern. `*.x` and `x.*` map directly; a `*` elsewhere (the tenant in
/// `autodiscover.*.onmicrosoft.com`) becomes an anchored regex in which `*` matches one or more
/// characters, which cannot leave the fixed Microsoft domain around it.
pub fn url_pattern(url: &str) -> Result<HostPattern, String> {
    match HostPattern::parse(url) {
        Ok(p) => Ok(p),
        Err(e) if !url.contains('*') || url.starts_with('~') => Err(e.reason),
        Err(_) => {
            let mut re = String::new();
            for (i, part) in url.split('*').enumerate() {
                if i > 0 {
                    re.push_str(".+");
                }
                re.push_str(&regex::escape(part));
            }
            HostPattern::parse(&format!("~{re}")).map_err(|e| e.reason)
        }
    }
}

/// `443` or `1024-65535` (surrounding spaces allowed).
pub fn parse_port_range(s: &str) -> Option<RangeInclusive<u16>> {
    let s = s.trim();
    let (first, last) = s.split_once('-').unwrap_or((s, s));
    let first: u16 = first.trim().parse().ok()?;
    let last: u16 = last.trim().parse().ok()?;
    (first > 0 && first <= last).then_some(first..=last)
}

#[cfg(test)]
mod tests;
