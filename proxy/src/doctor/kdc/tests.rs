#![expect(clippy::unwrap_used, reason = "tests")]

use super::*;

#[test]
fn integers_are_minimal_and_read_back() {
    for v in [0, 5, 127, 128, 255, 256, -1, -128, -129, i32::MAX, i32::MIN] {
        assert_eq!(read_int(&int(v)), Some(i64::from(v)), "{v}");
    }
    assert_eq!(int(128), vec![2, 2, 0, 128]);
}

#[test]
fn krb_error_gives_time_code_and_etypes() {
    let stime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let entry = |e: i32| der(0x30, &der(0xa0, &int(e)));
    let info = der(0x30, &[entry(18), entry(17)].concat());
    let pa = der(
        0x30,
        &[
            der(0xa1, &int(PA_ETYPE_INFO2)),
            der(0xa2, &der(0x04, &info)),
        ]
        .concat(),
    );
    let e_data = der(0x04, &der(0x30, &pa));
    let body = der(
        0x30,
        &[
            der(0xa0, &int(5)),
            der(0xa1, &int(30)),
            der(0xa4, &generalized_time(stime)),
            der(0xa5, &int(250_000)),
            der(0xa6, &int(25)),
            der(0xa9, &der(0x1b, b"LAB.TEST")),
            der(0xac, &e_data),
        ]
        .concat(),
    );
    let reply = parse_reply(&der(0x7e, &body)).unwrap();
    assert_eq!(
        reply,
        Reply::Error {
            code: 25,
            stime: stime + Duration::from_millis(250),
            etypes: vec![18, 17]
        }
    );
    for cut in 0..body.len() {
        let _ = parse_reply(&der(0x7e, &body[..cut]));
    }
}

#[test]
fn as_req_is_well_formed() {
    let req = as_req("HTTP/proxy.lab.test", "LAB.TEST", SystemTime::now());
    let (tag, value, rest) = tlv(&req).unwrap();
    assert_eq!((tag, rest.len()), (0x6a, 0));
    let f = fields(tlv(value).unwrap().1).unwrap();
    assert_eq!(read_int(field(&f, 2).unwrap()), Some(10));
}
