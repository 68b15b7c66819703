//! Reads which service principal a Kerberos token asks for, so that a failed handshake can be
//! logged as "the client asked for HTTP/proxy@REALM" — the one fact an operator needs when the
//! keytab and the name clients use for the proxy disagree. GSS-API's own messages ("The ticket
//! isn't for us") do not say it.
//!
//! The token is SPNEGO (NegTokenInit → mechToken) or a raw Kerberos GSS token wrapping an
//! AP-REQ whose ticket carries `realm` and `sname` in the clear (RFC 4120 §5.3). This is a
//! bounded DER walk over untrusted bytes: it returns `None` on anything unexpected and never
//! panics.

const KRB5_OIDS: [&[u8]; 2] = [
    // 1.2.840.113554.1.2.2 (Kerberos V5) and 1.2.840.48018.1.2.2 (Microsoft's variant)
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02],
    &[0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02],
];
const MAX_DEPTH: usize = 10;

/// One TLV: (tag, value, rest). Single-byte tags, definite lengths up to 4 bytes.
pub(crate) fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The service principal (`HTTP/proxy.example.com@EXAMPLE.COM`) the token's ticket is for.
pub(crate) fn requested_spn(token: &[u8]) -> Option<String> {
    find_ticket(token, 0)
}

fn find_ticket(mut input: &[u8], depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    while !input.is_empty() {
        let (tag, value, rest) = tlv(input)?;
        if tag == 0x61 {
            if let Some(spn) = parse_ticket(value) {
                return Some(spn);
            }
        }
        if tag == 0x60 {
            // A GSS token: OID, then (for Kerberos) a 2-byte token id, then the AP-REQ.
            if let Some((0x06, oid, after)) = tlv(value) {
                let inner = if KRB5_OIDS.contains(&oid) {
                    after.get(2..)?
                } else {
                    after
                };
                if let Some(spn) = find_ticket(inner, depth + 1) {
                    return Some(spn);
                }
            }
        } else if tag & 0x20 != 0 || tag == 0x04 {
            // Constructed values, and OCTET STRINGs (SPNEGO's mechToken), may hold the ticket.
            if let Some(spn) = find_ticket(value, depth + 1) {
                return Some(spn);
            }
        }
        input = rest;
    }
    None
}

/// Ticket ::= [APPLICATION 1] SEQUENCE { [0] tkt-vno, [1] realm, [2] sname, [3] enc-part }
fn parse_ticket(value: &[u8]) -> Option<String> {
    let (0x30, mut fields, _) = tlv(value)? else {
        return None;
    };
    let (mut realm, mut sname) = (None, None);
    while !fields.is_empty() {
        let (tag, field, rest) = tlv(fields)?;
        match tag {
            0xa1 => realm = general_string(field),
            0xa2 => sname = principal_name(field),
            _ => {}
        }
        fields = rest;
    }
    Some(format!("{}@{}", sname?, realm?))
}

fn general_string(field: &[u8]) -> Option<String> {
    let (0x1b, bytes, _) = tlv(field)? else {
        return None;
    };
    let s = std::str::from_utf8(bytes).ok()?;
    s.chars()
        .all(|c| c.is_ascii_graphic())
        .then(|| s.to_owned())
}

/// PrincipalName ::= SEQUENCE { [0] name-type, [1] SEQUENCE OF KerberosString }
fn principal_name(field: &[u8]) -> Option<String> {
    let (0x30, mut parts, _) = tlv(field)? else {
        return None;
    };
    while !parts.is_empty() {
        let (tag, part, rest) = tlv(parts)?;
        if tag == 0xa1 {
            let (0x30, mut names, _) = tlv(part)? else {
                return None;
            };
            let mut components = Vec::new();
            while !names.is_empty() {
                let (0x1b, name, rest) = tlv(names)? else {
                    return None;
                };
                components.push(std::str::from_utf8(name).ok()?.to_owned());
                names = rest;
            }
            return (!components.is_empty()).then(|| components.join("/"));
        }
        parts = rest;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if value.len() < 0x80 {
            out.push(value.len() as u8);
        } else {
            out.extend([0x82, (value.len() >> 8) as u8, value.len() as u8]);
        }
        out.extend_from_slice(value);
        out
    }

    fn ticket(realm: &str, sname: &[&str]) -> Vec<u8> {
        let names: Vec<u8> = sname.iter().flat_map(|n| der(0x1b, n.as_bytes())).collect();
        let principal = der(
            0x30,
            &[der(0xa0, &der(0x02, &[2])), der(0xa1, &der(0x30, &names))].concat(),
        );
        let fields = [
            der(0xa0, &der(0x02, &[5])),
            der(0xa1, &der(0x1b, realm.as_bytes())),
            der(0xa2, &principal),
            der(0xa3, &der(0x30, &[0u8; 40])),
        ]
        .concat();
        der(0x61, &der(0x30, &fields))
    }

    fn spnego(ticket: &[u8]) -> Vec<u8> {
        let ap_req = der(
            0x6e,
            &der(
                0x30,
                &[der(0xa0, &der(0x02, &[5])), der(0xa3, ticket)].concat(),
            ),
        );
        let krb = der(
            0x60,
            &[der(0x06, KRB5_OIDS[0]), vec![0x01, 0x00], ap_req].concat(),
        );
        let init = der(
            0x30,
            &[
                der(0xa0, &der(0x30, &der(0x06, KRB5_OIDS[0]))),
                der(0xa2, &der(0x04, &krb)),
            ]
            .concat(),
        );
        let spnego_oid = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
        der(0x60, &[der(0x06, &spnego_oid), der(0xa0, &init)].concat())
    }

    #[test]
    fn finds_the_spn_in_spnego_and_raw_tokens() {
        let t = ticket("LAB.TEST", &["HTTP", "proxy.lab.test"]);
        assert_eq!(
            requested_spn(&spnego(&t)).as_deref(),
            Some("HTTP/proxy.lab.test@LAB.TEST")
        );
        let raw = der(
            0x60,
            &[
                der(0x06, KRB5_OIDS[1]),
                vec![0x01, 0x00],
                der(0x6e, &der(0x30, &der(0xa3, &t))),
            ]
            .concat(),
        );
        assert_eq!(
            requested_spn(&raw).as_deref(),
            Some("HTTP/proxy.lab.test@LAB.TEST")
        );
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        let t = spnego(&ticket("LAB.TEST", &["HTTP", "x"]));
        for cut in 0..t.len() {
            let _ = requested_spn(&t[..cut]);
        }
        for bytes in [
            &b""[..],
            b"\x60",
            b"\x60\x84\xff\xff\xff\xff",
            b"NTLMSSP\0\x01",
            &[0x61; 64],
        ] {
            assert_eq!(requested_spn(bytes), None);
        }
        let mut nested = Vec::new();
        for _ in 0..40 {
            nested = der(0x30, &nested);
        }
        assert_eq!(requested_spn(&nested), None);
    }
}
