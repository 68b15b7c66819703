//! Which protocol upgrades (`Upgrade` plus `Connection: upgrade`) cross the proxy
//! (`server.allowed_upgrades`, `["websocket"]` by default).
//!
//! After an origin's `101 Switching Protocols` the proxy relays raw bytes: whatever the client
//! sends next is neither decided by the policy nor logged. For WebSocket that is the point (its
//! frames are not HTTP requests). For `h2c` it is a bypass — the client's next HTTP/2 requests,
//! `GET /admin` included, reach the origin unseen — so h2c is never offered to an origin, and
//! neither is any protocol not listed: the `Upgrade` header loses those tokens (and disappears
//! when none is left), and the request is forwarded as an ordinary one.

use http::header::{self, HeaderMap, HeaderValue};

use crate::config::UpgradeProtocol;
use crate::headers::wants_upgrade;

/// The protocol name of one `Upgrade` token (`websocket`, `TLS/1.2` → `tls`), compared
/// case-insensitively.
fn name_of(token: &str) -> &str {
    token.split('/').next().unwrap_or("").trim()
}

fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Keeps only the allowed protocols in a request's `Upgrade` header. Returns the protocols
/// still offered — the request then upgrades — or `None`, when it asked for no upgrade or for
/// none that may cross the proxy (the caller then strips `Upgrade` as any hop-by-hop header).
pub(crate) fn allowed_offer(
    headers: &mut HeaderMap,
    allowed: &[UpgradeProtocol],
) -> Option<HeaderValue> {
    if !wants_upgrade(headers) {
        return None;
    }
    let kept: Vec<&str> = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(tokens)
        .filter(|t| {
            let name = name_of(t);
            !name.eq_ignore_ascii_case("h2c")
                && allowed
                    .iter()
                    .any(|a| name.eq_ignore_ascii_case(a.as_str()))
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    let offer = HeaderValue::from_str(&kept.join(", ")).ok()?;
    headers.insert(header::UPGRADE, offer.clone());
    Some(offer)
}

/// Whether an origin's `101` switched to one of the protocols the request offered: an origin
/// switching to anything else would get a relay nobody allowed.
pub(crate) fn switched_to_offered(response: &HeaderMap, offer: &HeaderValue) -> bool {
    let offered: Vec<&str> = tokens(offer).map(name_of).collect();
    let mut chosen = response.get_all(header::UPGRADE).iter().flat_map(tokens);
    match (chosen.next(), chosen.next()) {
        (Some(one), None) => offered.iter().any(|o| o.eq_ignore_ascii_case(name_of(one))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::headers::tests::headers;

    #[test]
    fn only_allowed_protocols_are_offered() {
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a [UpgradeProtocol],
            Option<&'a str>,
        );
        let websocket = [UpgradeProtocol::websocket()];
        let cases: [Case<'_>; 7] = [
            (
                &[("connection", "Upgrade"), ("upgrade", "websocket")],
                &websocket,
                Some("websocket"),
            ),
            (
                &[("connection", "upgrade"), ("upgrade", "WebSocket")],
                &websocket,
                Some("WebSocket"),
            ),
            (
                &[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", "h2c"),
                ],
                &websocket,
                None,
            ),
            (
                &[("connection", "upgrade"), ("upgrade", "h2c, websocket")],
                &websocket,
                Some("websocket"),
            ),
            (
                &[("connection", "upgrade"), ("upgrade", "TLS/1.2")],
                &websocket,
                None,
            ),
            // No `Connection: upgrade`: no upgrade at all.
            (&[("upgrade", "websocket")], &websocket, None),
            (
                &[("connection", "upgrade"), ("upgrade", "websocket")],
                &[],
                None,
            ),
        ];
        for (pairs, allowed, want) in cases {
            let mut h = headers(pairs);
            let offer = allowed_offer(&mut h, allowed);
            assert_eq!(
                offer.as_ref().map(|v| v.to_str().unwrap()),
                want,
                "{pairs:?}"
            );
            if let Some(want) = want {
                assert_eq!(h["upgrade"], want);
            }
        }
    }

    #[test]
    fn the_origin_must_switch_to_an_offered_protocol() {
        let offer = HeaderValue::from_static("websocket");
        assert!(switched_to_offered(
            &headers(&[("upgrade", "WebSocket")]),
            &offer
        ));
        for bad in [
            vec![("upgrade", "h2c")],
            vec![],
            vec![("upgrade", "websocket, h2c")],
        ] {
            assert!(!switched_to_offered(&headers(&bad), &offer), "{bad:?}");
        }
    }

    #[test]
    fn h2c_and_non_tokens_cannot_be_allowed() {
        assert_eq!(
            UpgradeProtocol::parse(" WebSocket ").unwrap(),
            UpgradeProtocol::websocket()
        );
        for bad in ["h2c", "H2C", "", "web socket", "tls/1.2"] {
            assert!(UpgradeProtocol::parse(bad).is_err(), "{bad:?}");
        }
        let err = crate::config::Config::parse(
            "[server]\nallowed_upgrades = [\"websocket\", \"h2c\"]\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("key `server.allowed_upgrades[1]`"), "{err}");
        let config = crate::config::Config::parse("", "t").unwrap();
        assert_eq!(
            config.server.allowed_upgrades,
            [UpgradeProtocol::websocket()]
        );
    }
}
