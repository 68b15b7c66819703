//! The names a leaf is minted for: normalisation of SNI and CONNECT hosts, and the origin
//! certificate's subjectAltNames.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use x509_parser::extensions::GeneralName;

use crate::Error;

/// At most this many names are copied from an origin certificate. CDN certificates carry up to a
/// few hundred; copying them all would make every handshake to such a host send a huge leaf.
pub const MAX_ORIGIN_SANS: usize = 100;

/// A normalised DNS name: ASCII, lowercase, no trailing dot. It may start with a `*.` wildcard
/// label only when it came from an origin certificate's SAN, never from SNI.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName(String);

impl DnsName {
    /// The name as it goes into the certificate.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks and normalises `name`. Only A-labels are accepted: SNI carries IDNs in punycode and
    /// a certificate's dNSName is an IA5String, so a U-label here means a broken peer.
    fn parse(name: &str, allow_wildcard: bool) -> Result<Self, Error> {
        let invalid = || Error::InvalidName {
            name: name.to_owned(),
        };
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        if trimmed.is_empty() || trimmed.len() > 253 {
            return Err(invalid());
        }
        let lower = trimmed.to_ascii_lowercase();
        for (i, label) in lower.split('.').enumerate() {
            let wildcard = i == 0 && label == "*" && allow_wildcard && lower.len() > 2;
            let ok = wildcard
                || (!label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            if !ok {
                return Err(invalid());
            }
        }
        Ok(DnsName(lower))
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name a leaf certificate is issued for, and the key it is cached under.
///
/// The cache key is the normalised SNI name, or the target when the client sent no SNI, but never
/// the CONNECT `host:port`: one leaf serves every port of a host, and `Example.COM.` and
/// `example.com` share one entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeafName {
    /// Goes into a dNSName SAN.
    Dns(DnsName),
    /// Goes into an iPAddress SAN: browsers reject a dNSName holding an IP literal.
    Ip(IpAddr),
}

impl LeafName {
    /// The name from the ClientHello's server_name extension. Some broken clients send an IP
    /// literal there (RFC 6066 forbids it); that becomes an IP name rather than an error.
    pub fn from_sni(sni: &str) -> Result<Self, Error> {
        match sni.parse::<IpAddr>() {
            Ok(ip) => Ok(LeafName::Ip(ip)),
            Err(_) => DnsName::parse(sni, false).map(LeafName::Dns),
        }
    }

    /// The host part of a CONNECT target (no port). IPv6 literals may be bracketed.
    pub fn from_host(host: &str) -> Result<Self, Error> {
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match unbracketed.parse::<IpAddr>() {
            Ok(ip) => Ok(LeafName::Ip(ip)),
            Err(_) => DnsName::parse(host, false).map(LeafName::Dns),
        }
    }

    /// The name to mint for one intercepted connection: the SNI when the client sent one, else
    /// the CONNECT host (a client that connects by IP usually sends no SNI).
    pub fn for_connection(sni: Option<&str>, connect_host: &str) -> Result<Self, Error> {
        match sni {
            Some(sni) => Self::from_sni(sni),
            None => Self::from_host(connect_host),
        }
    }

    pub(crate) fn to_san(&self) -> Result<rcgen::SanType, Error> {
        Ok(match self {
            LeafName::Dns(name) => rcgen::SanType::DnsName(name.as_str().try_into()?),
            LeafName::Ip(ip) => rcgen::SanType::IpAddress(*ip),
        })
    }

    /// The text for the leaf's subject CN (which old clients still look at).
    pub(crate) fn common_name(&self) -> String {
        match self {
            LeafName::Dns(name) => name.to_string(),
            LeafName::Ip(ip) => ip.to_string(),
        }
    }
}

impl fmt::Display for LeafName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafName::Dns(name) => name.fmt(f),
            LeafName::Ip(ip) => ip.fmt(f),
        }
    }
}

/// The DNS and IP subjectAltNames of an origin certificate (DER), normalised and deduplicated,
/// at most [`MAX_ORIGIN_SANS`] of them.
///
/// The proxy verifies the origin first and then mints a leaf carrying these names too, so a
/// client that connected by IP or by another of the origin's names still validates. Entries we
/// cannot reproduce (URIs, e-mail addresses, malformed names) are skipped rather than failing
/// the connection: the leaf is still valid for the name the client asked for.
pub fn origin_sans(cert_der: &[u8]) -> Result<Vec<LeafName>, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|source| Error::ParseCertificate { source })?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|source| Error::ParseExtension { source })?
    else {
        return Ok(Vec::new());
    };
    let mut names: Vec<LeafName> = Vec::new();
    for general_name in &san.value.general_names {
        let name = match general_name {
            GeneralName::DNSName(dns) => DnsName::parse(dns, true).ok().map(LeafName::Dns),
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(LeafName::Ip),
            _ => None,
        };
        if let Some(name) = name {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.len() == MAX_ORIGIN_SANS {
            break;
        }
    }
    Ok(names)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|v6| IpAddr::V6(Ipv6Addr::from(v6)))
}

#[cfg(test)]
mod tests;
