//! Header rules shared by every forwarding path: hop-by-hop removal, `Via`, `X-Forwarded-For`,
//! `User-Agent`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use crate::config::ForwardedFor;
use crate::error::ProxyError;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers that describe one hop and never cross the proxy (RFC 9110 §7.6.1), plus the
/// proxy-authentication pair, which belongs to the client↔proxy hop.
///
/// `Trailer` is deliberately *not* here: RFC 9110 §6.6.2 makes it end-to-end (RFC 2616's
/// hop-by-hop list named "Trailers", meaning TE's token), and hyper only sends the trailer
/// fields a message declares in `Trailer`, so removing it would silently drop trailers.
fn fixed_hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// The `User-Agent` header, when it is text (policy rules match on it).
pub(crate) fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

/// True when the message asks to switch protocols (`Connection: upgrade` plus `Upgrade`).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// Refuses a request body framed by anything but one `chunked` coding: `chunked, chunked` (or
/// two `Transfer-Encoding: chunked` lines), `gzip, chunked`. hyper decodes the final `chunked`
/// and accepts the rest; the proxy re-frames the body for the origin, so every other coding
/// layer would be silently dropped and the origin would read the still-encoded bytes as the
/// body — a request the proxy never saw (RFC 9112 §6.1 forbids applying chunked twice). A
/// coding other than a final `chunked` hyper already refuses.
pub(crate) fn check_transfer_coding(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(only), None) if only.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(ProxyError::BadRequest(
            "Transfer-Encoding must be exactly one \"chunked\"".into(),
        )),
    }
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers. With `upgrade`, the `Upgrade` header survives and
/// `Connection: upgrade` is set again, as the next hop needs both to switch protocols.
/// A `TE: trailers` request keeps saying so, so that the origin still sends trailers.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Messages carry few of these (typically `Connection: keep-alive`): one pass over the names
    // finds them, instead of eight removals that each hash a name (this runs twice per request).
    let fixed = fixed_hop_by_hop();
    let mut present = [false; 8];
    for name in headers.keys() {
        if let Some(i) = fixed.iter().position(|f| *f == name) {
            present[i] = true;
        }
    }
    if !upgrade && !present.contains(&true) {
        return;
    }
    // Connection and TE are read before they go; a request that only carries
    // Proxy-Authorization (every authenticated one) skips both.
    let has = |name: &HeaderName| fixed.iter().zip(present).any(|(f, p)| p && *f == name);
    let te_trailers = has(&header::TE)
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    let named: Vec<HeaderName> = if has(&header::CONNECTION) {
        connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            // Connection cannot be used to strip the message's framing or its target.
            .filter(|n| *n != header::HOST && *n != header::CONTENT_LENGTH)
            .collect()
    } else {
        Vec::new()
    };
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for (name, present) in fixed.into_iter().zip(present) {
        if present && !(upgrade && *name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn version_label(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Our `Via` entries ("1.1 portcullis"), one per HTTP version, rendered once per configuration
/// rather than per message.
#[derive(Debug, Clone)]
pub(crate) struct Via {
    /// Indexed by [`Via::slot`].
    entries: [Option<HeaderValue>; 5],
}

impl Via {
    pub(crate) fn new(pseudonym: &str) -> Via {
        let entry =
            |v: Version| HeaderValue::from_str(&format!("{} {}", version_label(v), pseudonym)).ok();
        Via {
            entries: [
                entry(Version::HTTP_09),
                entry(Version::HTTP_10),
                entry(Version::HTTP_11),
                entry(Version::HTTP_2),
                entry(Version::HTTP_3),
            ],
        }
    }

    fn slot(version: Version) -> usize {
        match version {
            Version::HTTP_09 => 0,
            Version::HTTP_10 => 1,
            Version::HTTP_2 => 3,
            Version::HTTP_3 => 4,
            _ => 2,
        }
    }

    /// Appends our entry for a message received with `version`.
    pub(crate) fn append(&self, headers: &mut HeaderMap, version: Version) {
        if let Some(value) = &self.entries[Self::slot(version)] {
            headers.append(header::VIA, value.clone());
        }
    }
}

/// True when some `Via` entry names us: the message has already passed through this proxy.
pub(crate) fn via_names_us(headers: &HeaderMap, pseudonym: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| entry.split_whitespace().nth(1))
        .any(|received_by| received_by.eq_ignore_ascii_case(pseudonym))
}

/// A client address as a header value, rendered once per connection for `X-Forwarded-For`.
pub(crate) fn client_address_value(client: IpAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::from_str(&client.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Applies the `x_forwarded_for` setting for a request from `client` (see
/// [`client_address_value`]).
pub(crate) fn apply_forwarded_for(
    headers: &mut HeaderMap,
    mode: ForwardedFor,
    client: &HeaderValue,
) {
    let addition = match mode {
        ForwardedFor::Transparent => return,
        ForwardedFor::Delete => {
            headers.remove(&X_FORWARDED_FOR);
            return;
        }
        ForwardedFor::On => client.clone(),
        ForwardedFor::Off => HeaderValue::from_static("unknown"),
    };
    let joined = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            let addition = addition.to_str().unwrap_or("unknown");
            HeaderValue::from_str(&format!("{prev}, {addition}")).ok()
        }
        _ => Some(addition),
    };
    if let Some(value) = joined {
        headers.insert(&X_FORWARDED_FOR, value);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// A header map from `(name, value)` pairs, repeated names appended.
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret, content-length"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("upgrade", "websocket"),
            ("content-length", "3"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        // HeaderMap iteration order is unspecified after removals.
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["content-length", "trailer", "x-end-to-end"]);
    }

    #[test]
    fn upgrade_keeps_upgrade_and_te_trailers_survives() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers, deflate"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn only_one_chunked_coding_frames_a_body() {
        for ok in [vec![], vec!["chunked"], vec!["Chunked"], vec![" chunked ,"]] {
            let pairs: Vec<_> = ok.iter().map(|v| ("transfer-encoding", *v)).collect();
            assert!(check_transfer_coding(&headers(&pairs)).is_ok(), "{ok:?}");
        }
        for bad in [
            vec!["chunked, chunked"],
            vec!["chunked", "chunked"],
            vec!["Chunked ,chunked"],
            vec!["gzip, chunked"],
            vec!["gzip", "chunked"],
        ] {
            let pairs: Vec<_> = bad.iter().map(|v| ("transfer-encoding", *v)).collect();
            let err = check_transfer_coding(&headers(&pairs)).unwrap_err();
            assert_eq!(err.cause(), "bad-request", "{bad:?}");
        }
    }

    #[test]
    fn via_and_loop_detection() {
        let mut h = headers(&[("via", "1.0 fred, 1.1 other (squid)")]);
        assert!(!via_names_us(&h, "portcullis"));
        Via::new("portcullis").append(&mut h, Version::HTTP_11);
        assert!(via_names_us(&h, "Portcullis"));
        assert_eq!(
            h.get_all("via").iter().next_back().unwrap(),
            "1.1 portcullis"
        );
        let mut h = HeaderMap::new();
        Via::new("portcullis").append(&mut h, Version::HTTP_10);
        assert_eq!(h["via"], "1.0 portcullis");
    }

    #[test]
    fn forwarded_for_modes() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let cases = [
            (ForwardedFor::On, Some("1.1.1.1"), Some("1.1.1.1, 10.1.2.3")),
            (ForwardedFor::On, None, Some("10.1.2.3")),
            (ForwardedFor::Off, None, Some("unknown")),
            (ForwardedFor::Transparent, Some("9.9.9.9"), Some("9.9.9.9")),
            (ForwardedFor::Delete, Some("9.9.9.9"), None),
        ];
        for (mode, before, after) in cases {
            let mut h = HeaderMap::new();
            if let Some(b) = before {
                h.insert("x-forwarded-for", HeaderValue::from_static(b));
            }
            apply_forwarded_for(&mut h, mode, &client_address_value(ip));
            assert_eq!(
                h.get("x-forwarded-for").map(|v| v.to_str().unwrap()),
                after,
                "{mode:?}"
            );
        }
    }
}
