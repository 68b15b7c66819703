use super::*;

fn dns(name: &str) -> LeafName {
    LeafName::Dns(DnsName(name.to_owned()))
}

#[test]
fn sni_is_lowercased_and_loses_the_trailing_dot() {
    assert_eq!(
        LeafName::from_sni("Outlook.Office365.COM.").ok(),
        Some(dns("outlook.office365.com"))
    );
}

#[test]
fn ip_literals_become_ip_names() {
    assert_eq!(
        LeafName::from_sni("192.0.2.7").ok(),
        Some(LeafName::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))))
    );
    assert!(matches!(
        LeafName::from_host("[2001:db8::1]"),
        Ok(LeafName::Ip(IpAddr::V6(_)))
    ));
    assert!(matches!(
        LeafName::from_host("2001:db8::1"),
        Ok(LeafName::Ip(IpAddr::V6(_)))
    ));
}

#[test]
fn connection_name_prefers_sni_over_connect_host() {
    assert_eq!(
        LeafName::for_connection(Some("a.example"), "192.0.2.1").ok(),
        Some(dns("a.example"))
    );
    assert!(matches!(
        LeafName::for_connection(None, "192.0.2.1"),
        Ok(LeafName::Ip(_))
    ));
    assert_eq!(
        LeafName::for_connection(None, "B.Example").ok(),
        Some(dns("b.example"))
    );
}

#[test]
fn bad_names_are_rejected() {
    for bad in [
        "",
        ".",
        "a..b",
        "-a.example",
        "a-.example",
        "a b.example",
        "bücher.example",
        "*.example.com", // no wildcards from SNI
        "example.com:443",
        &"a".repeat(64),
        &format!("{}.example", "a.".repeat(127)),
    ] {
        assert!(LeafName::from_sni(bad).is_err(), "{bad:?} was accepted");
    }
    assert!(LeafName::from_host("[not-an-ip]").is_err());
}

#[test]
fn underscores_and_long_labels_within_limits_are_accepted() {
    assert!(LeafName::from_sni("_dmarc.example.com").is_ok());
    assert!(LeafName::from_sni(&format!("{}.example", "a".repeat(63))).is_ok());
}

#[test]
fn wildcards_are_allowed_in_origin_sans_only_as_the_first_label() {
    assert!(DnsName::parse("*.Example.com", true).is_ok_and(|n| n.as_str() == "*.example.com"));
    assert!(DnsName::parse("a.*.example.com", true).is_err());
    assert!(DnsName::parse("*", true).is_err());
    assert!(DnsName::parse("f*.example.com", true).is_err());
}

#[test]
fn ip_bytes_of_both_families_are_decoded() {
    assert_eq!(
        ip_from_bytes(&[10, 0, 0, 1]),
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
    );
    assert_eq!(
        ip_from_bytes(&Ipv6Addr::LOCALHOST.octets()),
        Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
    );
    assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
}

#[test]
fn origin_sans_of_garbage_is_an_error() {
    assert!(matches!(
        origin_sans(b"not a certificate"),
        Err(Error::ParseCertificate { .. })
    ));
}
