//! The generated PAC file, run by a real PAC evaluator (node + npm `pac-resolver`).
//!
//! Skipped with a message when node or pac-resolver is missing, unless
//! `PORTCULLIS_REQUIRE_PAC=1` (CI), where a missing evaluator fails the test.
//! Install: `npm install -g pac-resolver@7 @tootallnate/quickjs-emscripten@0.23` (the test sets NODE_PATH to `npm root -g`).
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::PathBuf;
use std::process::Command;

use portcullis_policy::config::RawPolicy;
use portcullis_policy::{pac, Policy};

const CONFIG: &str = r#"
direct = ["*.corp.example", "intranet.example", "autodiscover.*"]

[[rules]]
name = "wiki"
host = "wiki.example"
action = "direct"

[[rules]]
host = "*.proxied.example"
action = "tunnel"

[pac]
proxy = "proxy.corp.example:3128"
"#;

fn required() -> bool {
    std::env::var("PORTCULLIS_REQUIRE_PAC").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    assert!(!required(), "PORTCULLIS_REQUIRE_PAC=1 but {why}");
    eprintln!("SKIPPED pac_eval: {why} (install: npm install -g pac-resolver@7 @tootallnate/quickjs-emscripten@0.23)");
}

fn npm_root() -> Option<String> {
    let out = Command::new("npm").args(["root", "-g"]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn generated_pac_evaluates_as_intended() {
    let raw: RawPolicy = toml::from_str(CONFIG).unwrap();
    let policy = Policy::compile(&raw).unwrap();
    let text = pac::render(&policy, "unused:1");

    let dir = std::env::temp_dir().join(format!("portcullis-pac-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.pac");
    std::fs::write(&file, &text).unwrap();

    let proxy = "PROXY proxy.corp.example:3128";
    let cases = [
        ("http://wiki.example/", "DIRECT"),
        ("https://WIKI.Example./page", "DIRECT"),
        ("http://intranet.example/", "DIRECT"),
        ("http://a.b.corp.example/x", "DIRECT"),
        // The apex of a `*.suffix` pattern is not included.
        ("http://corp.example/", proxy),
        (
            "https://autodiscover.contoso.com/autodiscover/autodiscover.xml",
            "DIRECT",
        ),
        ("https://autodiscover/", "DIRECT"), // plain host name
        ("http://printer/", "DIRECT"),
        ("https://xautodiscover.contoso.com/", proxy),
        ("https://www.proxied.example/", proxy),
        ("https://www.example.com/", proxy),
        ("http://10.1.2.3/", proxy),
    ];

    let script: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "pac", "eval.js"]
        .iter()
        .collect();
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg(&file)
        .args(cases.iter().map(|(url, _)| url));
    if let Some(root) = npm_root() {
        cmd.env("NODE_PATH", root);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => return skip(&format!("node cannot be run: {e}")),
    };
    if out.status.code() == Some(3) {
        return skip("npm package pac-resolver is not installed");
    }
    assert!(
        out.status.success(),
        "evaluator failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(answers.len(), cases.len(), "{answers:?}");
    for ((url, want), got) in cases.iter().zip(&answers) {
        assert_eq!(got, want, "{url}\n{text}");
    }
    std::fs::remove_dir_all(&dir).expect("temp dir removed");
}
