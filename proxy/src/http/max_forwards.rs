//! `Max-Forwards` (RFC 9110 §7.6.2): how many more intermediaries a TRACE or OPTIONS request
//! may pass. At `0` the proxy is the request's final recipient and answers it itself; any other
//! value is decremented before forwarding. Other methods, and values that are not a number,
//! pass untouched (the RFC lets a recipient ignore the field for other methods).
//!
//! TRACE is answered as Squid answers it — `200` with the request echoed as `message/http` —
//! rather than refused: it is how an administrator finds which hop changes a request. The echo
//! leaves out the fields that carry credentials (RFC 9110 §9.3.8), so nothing a script could
//! not already read comes back (modern browsers do not send TRACE at all).

use bytes::{BufMut, BytesMut};
use http::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, COOKIE, PROXY_AUTHORIZATION};
use http::{Method, Request, Response, Version};

use crate::body::{self, ProxyBody};

static MAX_FORWARDS: http::HeaderName = http::header::MAX_FORWARDS;

/// What the proxy answers `OPTIONS` with when it is the final recipient: the methods it
/// forwards.
const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH";

/// Applies `Max-Forwards` to `req` as received. Returns the proxy's own answer when it is the
/// final recipient; otherwise the request goes on, its `Max-Forwards` one lower.
pub(super) fn apply<B>(req: &mut Request<B>) -> Option<Response<ProxyBody>> {
    let method = req.method();
    if method != Method::TRACE && method != Method::OPTIONS {
        return None;
    }
    let remaining = remaining(req.headers().get(&MAX_FORWARDS)?)?;
    if remaining > 0 {
        let lower = HeaderValue::from(remaining - 1);
        req.headers_mut().insert(&MAX_FORWARDS, lower);
        return None;
    }
    if method == Method::OPTIONS {
        let mut response = Response::new(body::empty());
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(ALLOWED));
        return Some(response);
    }
    let mut response = Response::new(body::full(echo(req)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("message/http"));
    Some(response)
}

/// The field's value, when it is a number (`1*DIGIT`); huge values saturate.
fn remaining(value: &HeaderValue) -> Option<u64> {
    let digits = value.as_bytes().trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// The request head as received, without the fields that carry credentials.
fn echo<B>(req: &Request<B>) -> bytes::Bytes {
    let version = match req.version() {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(req.method().as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(req.uri().to_string().as_bytes());
    out.put_u8(b' ');
    out.put_slice(version.as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in req.headers() {
        if [&AUTHORIZATION, &PROXY_AUTHORIZATION, &COOKIE].contains(&name) {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn request(method: &str, max_forwards: Option<&str>) -> Request<()> {
        let mut builder = Request::builder()
            .method(method)
            .uri("http://origin.test/a?b")
            .header("x-probe", "1")
            .header("cookie", "session=secret")
            .header("proxy-authorization", "Basic c2VjcmV0")
            .header("authorization", "Bearer secret");
        if let Some(v) = max_forwards {
            builder = builder.header("max-forwards", v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn zero_is_answered_other_values_are_decremented() {
        let cases = [
            ("TRACE", Some("0"), true, None),
            ("OPTIONS", Some(" 0 "), true, None),
            ("TRACE", Some("1"), false, Some("0")),
            ("OPTIONS", Some("10"), false, Some("9")),
            (
                "OPTIONS",
                Some("99999999999999999999999"),
                false,
                Some("18446744073709551614"),
            ),
            // Other methods, missing and invalid values: untouched.
            ("GET", Some("0"), false, Some("0")),
            ("POST", Some("3"), false, Some("3")),
            ("TRACE", None, false, None),
            ("TRACE", Some("-1"), false, Some("-1")),
            ("OPTIONS", Some("one"), false, Some("one")),
            ("OPTIONS", Some(""), false, Some("")),
        ];
        for (method, sent, answered, forwarded) in cases {
            let mut req = request(method, sent);
            let answer = apply(&mut req);
            assert_eq!(answer.is_some(), answered, "{method} {sent:?}");
            if !answered {
                let now = req
                    .headers()
                    .get("max-forwards")
                    .map(|v| v.to_str().unwrap());
                assert_eq!(now, forwarded, "{method} {sent:?}");
            }
        }
    }

    #[test]
    fn options_lists_the_methods() {
        let answer = apply(&mut request("OPTIONS", Some("0"))).unwrap();
        assert_eq!(answer.status(), 200);
        assert!(answer.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("OPTIONS"));
    }

    #[test]
    fn trace_echoes_the_head_without_credentials() {
        let req = request("TRACE", Some("0"));
        let text = String::from_utf8(echo(&req).to_vec()).unwrap();
        assert!(
            text.starts_with("TRACE http://origin.test/a?b HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(text.contains("x-probe: 1\r\nmax-forwards: 0\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(
            !text.contains("secret") && !text.contains("c2VjcmV0"),
            "{text}"
        );
    }
}
