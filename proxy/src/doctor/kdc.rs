//! Talking to the KDC the way `kinit` starts to: where it is (krb5.conf, as MIT krb5 finds it)
//! and one unauthenticated AS-REQ (RFC 4120 §3.1), whose answer carries what the doctor needs
//! in the clear — the KDC's clock (a KRB-ERROR's `stime`), the enctypes it holds for a
//! principal (PA-ETYPE-INFO2), or the enctype and kvno of the principal's key (an AS-REP's
//! `enc-part`). Nothing is decrypted and no key is used.

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::auth::spn::tlv;

/// What the KDC answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    Error {
        code: i32,
        /// The KDC's clock when it answered.
        stime: SystemTime,
        /// From PA-ETYPE-INFO2, when the error asks for pre-authentication.
        etypes: Vec<i32>,
    },
    /// The principal needs no pre-authentication: its key's enctype and version.
    AsRep { etype: i32, kvno: Option<u32> },
}

pub(super) const KDC_ERR_C_PRINCIPAL_UNKNOWN: i32 = 6;
pub(super) const KDC_ERR_PREAUTH_REQUIRED: i32 = 25;
const PA_ETYPE_INFO2: i32 = 19;
/// Enctypes offered in the request: what a current Windows or MIT client offers.
const OFFERED: [i32; 5] = [18, 17, 20, 19, 23];
const MAX_REPLY: usize = 64 * 1024;

/// The config files MIT krb5 reads: `KRB5_CONFIG` (colon-separated) or /etc/krb5.conf.
fn config_text() -> String {
    let files = std::env::var("KRB5_CONFIG").unwrap_or_else(|_| "/etc/krb5.conf".to_owned());
    files
        .split(':')
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `[libdefaults] default_realm`.
pub(super) fn default_realm() -> Option<String> {
    let text = config_text();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
        } else if section == "libdefaults" {
            if let Some(("default_realm", value)) =
                line.split_once('=').map(|(k, v)| (k.trim(), v.trim()))
            {
                return Some(value.to_owned());
            }
        }
    }
    None
}

/// The `kdc = host[:port]` entries for `realm` in `[realms]`.
pub(super) fn kdcs(realm: &str) -> Vec<String> {
    let text = config_text();
    let (mut section, mut in_realm) = (String::new(), false);
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            in_realm = false;
            continue;
        }
        if section != "realms" {
            continue;
        }
        match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some((name, "{")) => in_realm = name == realm,
            Some(("kdc", value)) if in_realm => out.push(value.to_owned()),
            _ if line.starts_with('}') => in_realm = false,
            _ => {}
        }
    }
    out
}

/// Sends an AS-REQ for `client@realm` (asking for a TGT) to `kdc` over TCP.
pub(super) async fn as_request(kdc: &str, client: &str, realm: &str) -> Result<Reply, String> {
    let addr = if kdc
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !kdc.ends_with(']')
    {
        kdc.to_owned()
    } else {
        format!("{kdc}:88")
    };
    let request = as_req(client, realm, SystemTime::now());
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("cannot connect to the KDC {addr}: {e}"))?;
        let len = u32::try_from(request.len()).map_err(|_| "request too long".to_owned())?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&request);
        stream
            .write_all(&framed)
            .await
            .map_err(|e| format!("KDC {addr}: {e}"))?;
        let mut len = [0u8; 4];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| format!("KDC {addr} did not answer: {e}"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_REPLY {
            return Err(format!("KDC {addr}: a {len}-byte answer is not Kerberos"));
        }
        let mut reply = vec![0u8; len];
        stream
            .read_exact(&mut reply)
            .await
            .map_err(|e| format!("KDC {addr}: {e}"))?;
        parse_reply(&reply).ok_or_else(|| format!("KDC {addr}: the answer is not a Kerberos reply"))
    };
    tokio::time::timeout(super::PROBE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("the KDC {addr} did not answer within 5 s")))
}

// === encoding: just enough DER for one AS-REQ ===

fn der(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

fn int(value: i32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    // Minimal two's complement: drop leading bytes that only repeat the sign.
    let mut start = 0;
    while start < 3
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    der(0x02, &bytes[start..])
}

fn principal(name_type: i32, components: &[&str]) -> Vec<u8> {
    let names: Vec<u8> = components
        .iter()
        .flat_map(|c| der(0x1b, c.as_bytes()))
        .collect();
    der(
        0x30,
        &[der(0xa0, &int(name_type)), der(0xa1, &der(0x30, &names))].concat(),
    )
}

fn generalized_time(at: SystemTime) -> Vec<u8> {
    let at = portcullis_certs::time::OffsetDateTime::from(at);
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    der(0x18, text.as_bytes())
}

fn as_req(client: &str, realm: &str, now: SystemTime) -> Vec<u8> {
    let components: Vec<&str> = client.split('/').collect();
    // KRB5_NT_PRINCIPAL (1); the nonce only has to differ between requests.
    let nonce = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() & 0x7fff_ffff);
    let etypes: Vec<u8> = OFFERED.iter().flat_map(|e| int(*e)).collect();
    let body = der(
        0x30,
        &[
            der(0xa0, &der(0x03, &[0, 0x40, 0, 0, 0x10])),
            der(0xa1, &principal(1, &components)),
            der(0xa2, &der(0x1b, realm.as_bytes())),
            der(0xa3, &principal(2, &["krbtgt", realm])),
            der(0xa5, &generalized_time(now + Duration::from_secs(86_400))),
            der(0xa7, &int(nonce as i32)),
            der(0xa8, &der(0x30, &etypes)),
        ]
        .concat(),
    );
    let req = der(
        0x30,
        &[der(0xa1, &int(5)), der(0xa2, &int(10)), der(0xa4, &body)].concat(),
    );
    der(0x6a, &req)
}

// === decoding: KRB-ERROR and AS-REP, bounded, None on anything unexpected ===

fn parse_reply(bytes: &[u8]) -> Option<Reply> {
    let (tag, value, _) = tlv(bytes)?;
    let (0x30, fields, _) = tlv(value)? else {
        return None;
    };
    match tag {
        0x7e => parse_error(fields),
        0x6b => parse_as_rep(fields),
        _ => None,
    }
}

/// The context-tagged fields `[n]` of a SEQUENCE, by number.
fn fields(mut input: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tag, value, rest) = tlv(input)?;
        out.push((tag.checked_sub(0xa0)?, value));
        input = rest;
    }
    Some(out)
}

fn field<'a>(fields: &[(u8, &'a [u8])], n: u8) -> Option<&'a [u8]> {
    fields.iter().find(|(t, _)| *t == n).map(|(_, v)| *v)
}

fn read_int(value: &[u8]) -> Option<i64> {
    let (0x02, bytes, _) = tlv(value)? else {
        return None;
    };
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    let first = if bytes[0] & 0x80 != 0 { -1i64 } else { 0 };
    Some(
        bytes
            .iter()
            .fold(first, |acc, b| (acc << 8) | i64::from(*b)),
    )
}

fn read_time(value: &[u8]) -> Option<SystemTime> {
    let (0x18, text, _) = tlv(value)? else {
        return None;
    };
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if digits.len() != 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits[r].parse::<u32>().ok();
    let month = portcullis_certs::time::Month::try_from(u8::try_from(n(4..6)?).ok()?).ok()?;
    let date = portcullis_certs::time::Date::from_calendar_date(
        i32::try_from(n(0..4)?).ok()?,
        month,
        u8::try_from(n(6..8)?).ok()?,
    )
    .ok()?;
    let time = portcullis_certs::time::Time::from_hms(
        u8::try_from(n(8..10)?).ok()?,
        u8::try_from(n(10..12)?).ok()?,
        u8::try_from(n(12..14)?).ok()?,
    )
    .ok()?;
    Some(date.with_time(time).assume_utc().into())
}

fn parse_error(body: &[u8]) -> Option<Reply> {
    let f = fields(body)?;
    let code = i32::try_from(read_int(field(&f, 6)?)?).ok()?;
    let stime = read_time(field(&f, 4)?)?;
    let susec = field(&f, 5)
        .and_then(read_int)
        .and_then(|u| u64::try_from(u).ok())
        .unwrap_or(0);
    let etypes = field(&f, 12).and_then(etype_info2).unwrap_or_default();
    Some(Reply::Error {
        code,
        stime: stime + Duration::from_micros(susec.min(999_999)),
        etypes,
    })
}

/// METHOD-DATA → PA-ETYPE-INFO2 → the enctypes.
fn etype_info2(e_data: &[u8]) -> Option<Vec<i32>> {
    let (0x04, method_data, _) = tlv(e_data)? else {
        return None;
    };
    let (0x30, mut padata, _) = tlv(method_data)? else {
        return None;
    };
    while !padata.is_empty() {
        let (0x30, pa, rest) = tlv(padata)? else {
            return None;
        };
        let f = fields(pa)?;
        if read_int(field(&f, 1)?)? == i64::from(PA_ETYPE_INFO2) {
            let (0x04, info, _) = tlv(field(&f, 2)?)? else {
                return None;
            };
            let (0x30, mut entries, _) = tlv(info)? else {
                return None;
            };
            let mut out = Vec::new();
            while !entries.is_empty() {
                let (0x30, entry, rest) = tlv(entries)? else {
                    return None;
                };
                out.push(i32::try_from(read_int(field(&fields(entry)?, 0)?)?).ok()?);
                entries = rest;
            }
            return Some(out);
        }
        padata = rest;
    }
    None
}

fn parse_as_rep(body: &[u8]) -> Option<Reply> {
    let f = fields(body)?;
    let (0x30, enc_part, _) = tlv(field(&f, 6)?)? else {
        return None;
    };
    let e = fields(enc_part)?;
    let etype = i32::try_from(read_int(field(&e, 0)?)?).ok()?;
    let kvno = field(&e, 1)
        .and_then(read_int)
        .and_then(|k| u32::try_from(k).ok());
    Some(Reply::AsRep { etype, kvno })
}

#[cfg(test)]
mod tests;
