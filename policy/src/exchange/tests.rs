//! One test per predicate-table row, plus the User-Agent table and the profile lists.
#![expect(clippy::unwrap_used, reason = "tests")]

use super::*;
use crate::host::HostPattern;

const OUTLOOK_WIN: &str =
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)";

fn class(method: &str, path: &str, ua: Option<&str>) -> Option<ExchangeClass> {
    classify(method, path, ua).map(|p| p.class)
}

#[test]
fn rpc_in_data_method() {
    assert_eq!(
        class("RPC_IN_DATA", "/x", None),
        Some(ExchangeClass::RpcHttp)
    );
    // Extension methods are case-sensitive tokens.
    assert_eq!(class("rpc_in_data", "/x", None), None);
}

#[test]
fn rpc_out_data_method() {
    assert_eq!(
        class("RPC_OUT_DATA", "/", None),
        Some(ExchangeClass::RpcHttp)
    );
}

#[test]
fn rpcproxy_path() {
    assert_eq!(
        class("GET", "/rpc/rpcproxy.dll?mail.corp:6001", None),
        Some(ExchangeClass::RpcHttp)
    );
    assert_eq!(
        class("GET", "/RPC/RpcProxy.dll", None),
        Some(ExchangeClass::RpcHttp)
    );
    assert_eq!(class("GET", "/rpc/other", None), None);
}

#[test]
fn msrpc_user_agent() {
    assert_eq!(
        class("POST", "/", Some("MSRPC")),
        Some(ExchangeClass::RpcHttp)
    );
    assert_eq!(class("POST", "/", Some("MSRPC-ish")), None);
}

#[test]
fn autodiscover_path() {
    for path in [
        "/autodiscover/autodiscover.xml",
        "/Autodiscover/Autodiscover.xml",
        "/autodiscover/autodiscover.json/v1.0/a@b?Protocol=Autodiscoverv1",
    ] {
        assert_eq!(
            class("POST", path, None),
            Some(ExchangeClass::Autodiscover),
            "{path}"
        );
    }
    assert_eq!(class("GET", "/autodiscover.xml", None), None);
}

#[test]
fn mapi_path() {
    assert_eq!(
        class("POST", "/mapi/emsmdb/?MailboxId=a@b", Some(OUTLOOK_WIN)),
        Some(ExchangeClass::Mapi)
    );
    assert_eq!(
        class("POST", "/mapi/nspi/?MailboxId=a@b", None),
        Some(ExchangeClass::Mapi)
    );
    assert_eq!(class("POST", "/mapinfo", None), None);
}

#[test]
fn ews_path() {
    assert_eq!(
        class("POST", "/EWS/Exchange.asmx", None),
        Some(ExchangeClass::Ews)
    );
    assert_eq!(
        class("POST", "/ews/exchange.asmx", None),
        Some(ExchangeClass::Ews)
    );
    assert_eq!(class("POST", "/news/", None), None);
}

#[test]
fn activesync_path() {
    assert_eq!(
        class("POST", "/Microsoft-Server-ActiveSync?Cmd=Ping&User=a", None),
        Some(ExchangeClass::Eas)
    );
}

#[test]
fn oab_path() {
    assert_eq!(
        class("GET", "/OAB/1234/oab.xml", None),
        Some(ExchangeClass::Oab)
    );
    assert_eq!(class("GET", "/oab", None), None);
}

#[test]
fn ordinary_requests_are_unclassified() {
    assert_eq!(class("GET", "/owa/", Some(OUTLOOK_WIN)), None);
    assert_eq!(class("GET", "/", None), None);
}

#[test]
fn every_predicate_has_a_test_above() {
    // Guards the "one test each" rule: adding a row without extending this list fails.
    assert_eq!(PREDICATES.len(), 9);
}

#[test]
fn outlook_user_agents() {
    let cases = [
        (OUTLOOK_WIN, true),
        ("microsoft office/16.0 (microsoft outlook 16.0)", true),
        ("MSRPC", true),
        ("Outlook-iOS/2.0", true),
        ("Outlook-Android/2.0", true),
        ("Mozilla/5.0 (Windows NT 10.0) Chrome/120", false),
        (
            "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Word 16.0)",
            false,
        ),
        ("", false),
    ];
    for (ua, want) in cases {
        assert_eq!(is_outlook_user_agent(ua), want, "{ua:?}");
    }
}

#[test]
fn profile_lists_parse() {
    for host in M365_HOSTS {
        HostPattern::parse(host).unwrap();
    }
    for net in M365_NETWORKS {
        net.parse::<ipnet::IpNet>().unwrap();
    }
}

#[test]
fn case_insensitive_helpers() {
    assert!(contains_ci("abcDEF", "cde"));
    assert!(!contains_ci("ab", "abc"));
    assert!(starts_with_ci("/EWS/x", "/ews/"));
    assert!(!starts_with_ci("/E", "/ews/"));
}
