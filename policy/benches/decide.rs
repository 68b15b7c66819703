//! `decide()` with 1,000 config rules plus the Outlook profile; the budget is 2 µs per decision.
#![expect(clippy::unwrap_used, reason = "bench setup")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_policy::config::RawPolicy;
use portcullis_policy::{ConnectFacts, Policy, RequestFacts};

/// 1,000 rules: mostly host rules of every indexable kind, plus the kinds that are scanned on
/// every decision (regex hosts, CIDRs, User-Agents, client networks).
fn thousand_rules() -> Policy {
    let mut text = String::new();
    for i in 0..1000 {
        let rule = match i % 10 {
            0..=3 => format!("host = \"site{i}.example\"\naction = \"tunnel\""),
            4..=6 => format!("host = [\"*.zone{i}.example\", \"zone{i}.example\"]\nport = 443\naction = \"deny\"\nreason = \"r\""),
            7 => format!("host = \"svc{i}.*\"\naction = \"inspect\""),
            8 => match i % 40 {
                8 => format!("host = \"~app{i}-[0-9]+\\\\.example\"\naction = \"tunnel\""),
                18 => format!("dest_ip = \"10.{}.0.0/16\"\naction = \"tunnel\"", i % 250),
                28 => format!("user_agent = \"Agent{i}/\"\nhost = \"*.ua.example\"\naction = \"tunnel\""),
                _ => format!("client = \"172.16.{}.0/24\"\nport = 8443\naction = \"deny\"\nreason = \"r\"", i % 250),
            },
            _ => format!("host = \"api{i}.example\"\npath = \"/v{i}/\"\naction = \"deny\"\nreason = \"r\""),
        };
        text.push_str(&format!("[[rules]]\n{rule}\n"));
    }
    let raw: RawPolicy = toml::from_str(&text).unwrap();
    Policy::compile(&raw).unwrap()
}

fn bench(c: &mut Criterion) {
    let policy = thousand_rules();
    let client = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20));
    let ua = Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0");
    let mut group = c.benchmark_group("decide_1000_rules");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let cases = [
        (
            "connect_miss_default",
            ConnectFacts::new("www.unknown-site.com", 443, client),
        ),
        (
            "connect_last_exact",
            ConnectFacts::new("site993.example", 443, client),
        ),
        (
            "connect_suffix_deep",
            ConnectFacts::new("a.b.c.zone996.example", 443, client),
        ),
        (
            "connect_outlook",
            ConnectFacts::new("outlook.office365.com", 443, client),
        ),
        (
            "connect_bare_ip_m365",
            ConnectFacts::new("52.97.12.1", 443, client),
        ),
        (
            "connect_bare_ip_miss",
            ConnectFacts::new("203.0.113.9", 443, client),
        ),
    ];
    for (name, facts) in cases {
        let facts = facts.with_user_agent(ua);
        group.bench_function(name, |b| {
            b.iter(|| policy.decide_connect(black_box(&facts)))
        });
    }
    let req = RequestFacts::new(
        "POST",
        "mail.corp.example",
        443,
        "/mapi/emsmdb/?MailboxId=x",
        client,
    )
    .with_user_agent(ua);
    group.bench_function("request_exchange_miss", |b| {
        b.iter(|| policy.decide_request(black_box(&req)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
