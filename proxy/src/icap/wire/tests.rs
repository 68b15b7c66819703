#![expect(clippy::unwrap_used, reason = "tests")]

use super::*;

#[test]
fn icap_head_with_folded_header_and_offsets() {
    let head = parse_icap_head(
        b"ICAP/1.0 200 OK\r\nISTag: \"CI0001-X\"\r\nX-Violations-Found: 1\r\n\t-\r\n\tLab.EICAR\r\n\
          Encapsulated: res-hdr=0, res-body=120\r\n\r\n",
    )
    .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("istag"), Some("\"CI0001-X\""));
    assert_eq!(head.header("x-violations-found"), Some("1 - Lab.EICAR"));
    assert_eq!(
        head.encapsulated().unwrap(),
        [("res-hdr".to_owned(), 0), ("res-body".to_owned(), 120)]
    );
}

#[test]
fn bad_heads_are_errors_not_panics() {
    for head in [
        &b"HTTP/1.1 200 OK\r\n\r\n"[..],
        b"ICAP/1.0 abc OK\r\n\r\n",
        b"ICAP/1.0 200 OK\r\n\tfolded\r\n\r\n",
        b"ICAP/1.0 200 OK\r\nno colon\r\n\r\n",
        b"ICAP/1.0 200\xff\r\n\r\n",
    ] {
        assert!(parse_icap_head(head).is_err(), "{head:?}");
    }
    let head =
        parse_icap_head(b"ICAP/1.0 200 OK\r\nEncapsulated: res-body=9, res-hdr=0\r\n\r\n").unwrap();
    assert!(
        head.encapsulated().is_err(),
        "offsets must not go backwards"
    );
}

#[tokio::test]
async fn chunks_are_decoded_with_extensions_and_trailers() {
    let wire = b"5; ieof\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    let mut r = tokio::io::BufReader::new(&wire[..]);
    let mut dec = ChunkReader::new();
    let mut body = Vec::new();
    while let Some(piece) = dec.next(&mut r).await.unwrap() {
        body.extend_from_slice(&piece);
    }
    assert_eq!(body, b"hello world");
    let mut rest = String::new();
    r.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "NEXT", "nothing after the last chunk is consumed");
}

#[tokio::test]
async fn cut_short_chunks_are_errors() {
    for wire in [&b"5\r\nhel"[..], b"zz\r\n", b"5\r\nhelloXX0\r\n\r\n"] {
        let mut r = tokio::io::BufReader::new(wire);
        let mut dec = ChunkReader::new();
        let mut result = Ok(Some(Bytes::new()));
        while let Ok(Some(_)) = result {
            result = dec.next(&mut r).await;
        }
        assert!(result.is_err(), "{wire:?}");
    }
}

#[test]
fn encapsulated_heads_round_trip() {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    let bytes = response_head(StatusCode::OK, &headers);
    assert_eq!(
        bytes,
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n"
    );
    let parsed = parse_http_response(&bytes).unwrap();
    assert_eq!(parsed.status, StatusCode::OK);
    let bytes = request_head(&Method::GET, "http://a.test/x", &headers);
    let parsed = parse_http_request(&bytes).unwrap();
    assert_eq!(parsed.uri, "http://a.test/x");
}
