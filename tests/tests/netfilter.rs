//! End-to-end tests of `portcullis netfilter` with the real nft and iptables.
//!
//! The lab (shared/recipes/LAB.md, recipe 3) is three network namespaces created per test:
//!
//! ```text
//!  cli  eth0 10.77.1.2/24 fd77:1::2/64 ── gw eth0 10.77.1.1 fd77:1::1 (LAN)
//!                                         gw eth1 10.77.2.1 fd77:2::1 ── srv eth0 10.77.2.2 fd77:2::2
//! ```
//!
//! socat listeners answer `<port>-ok peer=<address they saw>`; probes run socat in `cli`. Only
//! the namespaces' own firewalls are touched, never the root namespace's. Tests that need root
//! and namespaces print `SKIP` and pass where they cannot run, unless
//! `PORTCULLIS_REQUIRE_NETNS=1` (set in CI), which turns a would-be skip into a failure.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use portcullis_e2e::portcullis_bin;

const TOOLS: &[&str] = &[
    "ip",
    "nft",
    "iptables-restore",
    "ip6tables-restore",
    "iptables-save",
    "ip6tables-save",
    "socat",
    "ss",
    "unshare",
    "timeout",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/golden")
}

/// Whether root-only lab tests can run here; prints why not, or panics when CI requires them.
fn lab_available() -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let check = CHECK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        if !root {
            return Err("not running as root".into());
        }
        for tool in TOOLS {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                return Err(format!("{tool} is not installed"));
            }
        }
        let probe = format!("pcnf{}probe", std::process::id());
        let added = run("ip", &["netns", "add", &probe]);
        if !added.status.success() {
            return Err(format!(
                "`ip netns add` failed: {}",
                String::from_utf8_lossy(&added.stderr).trim()
            ));
        }
        run("ip", &["netns", "del", &probe]);
        Ok(())
    });
    match check {
        Ok(()) => true,
        Err(why) if std::env::var_os("PORTCULLIS_REQUIRE_NETNS").is_some_and(|v| v == "1") => {
            panic!("PORTCULLIS_REQUIRE_NETNS=1 but the netfilter lab cannot run: {why}")
        }
        Err(why) => {
            eprintln!("SKIP: netfilter lab test needs root, network namespaces and the tools {TOOLS:?}: {why}");
            false
        }
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Nft,
    Iptables,
}

impl Backend {
    fn arg(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Iptables => "iptables",
        }
    }
}

/// Three namespaces and the processes started in them; all removed on drop, even on panic.
struct Lab {
    /// Labs run one at a time: on a small, busy machine parallel labs starve the listeners and
    /// the probes' timeouts would decide the results. Released after `drop` cleaned up.
    _serial: MutexGuard<'static, ()>,
    cli: String,
    gw: String,
    srv: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        static N: AtomicUsize = AtomicUsize::new(0);
        static SERIAL: Mutex<()> = Mutex::new(());
        // A panicking lab test poisons the lock; its namespaces are gone by then.
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let id = format!(
            "pcnf{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            _serial: serial,
            cli: format!("{id}cli"),
            gw: format!("{id}gw"),
            srv: format!("{id}srv"),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let names = [lab.cli.clone(), lab.gw.clone(), lab.srv.clone()];
        for (i, ns) in names.iter().enumerate() {
            let added = run("ip", &["netns", "add", ns]);
            if !added.status.success() {
                // Only the namespaces created so far are deleted by Drop.
                lab.truncate(i);
                ok(added, "ip netns add");
            }
            lab.ip(&["-n", ns, "link", "set", "lo", "up"]);
            // No duplicate address detection: addresses (link-local ones too) work at once.
            for key in [
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ] {
                ok(lab.exec(ns, &["sysctl", "-qw", key]), "sysctl");
            }
        }
        let (c, g, s) = (&names[0], &names[1], &names[2]);
        // Both veth ends are created inside the namespaces: no name ever appears in the root one.
        lab.ip(&[
            "link", "add", "eth0", "netns", c, "type", "veth", "peer", "name", "eth0", "netns", g,
        ]);
        lab.ip(&[
            "link", "add", "eth1", "netns", g, "type", "veth", "peer", "name", "eth0", "netns", s,
        ]);
        for (ns, dev, v4, v6) in [
            (c, "eth0", "10.77.1.2/24", "fd77:1::2/64"),
            (g, "eth0", "10.77.1.1/24", "fd77:1::1/64"),
            (g, "eth1", "10.77.2.1/24", "fd77:2::1/64"),
            (s, "eth0", "10.77.2.2/24", "fd77:2::2/64"),
        ] {
            lab.ip(&["-n", ns, "addr", "add", v4, "dev", dev]);
            // nodad: usable at once instead of after duplicate address detection.
            lab.ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            lab.ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        lab.ip(&["-n", c, "route", "add", "default", "via", "10.77.1.1"]);
        lab.ip(&["-n", c, "-6", "route", "add", "default", "via", "fd77:1::1"]);
        lab.ip(&["-n", s, "route", "add", "default", "via", "10.77.2.1"]);
        lab.ip(&["-n", s, "-6", "route", "add", "default", "via", "fd77:2::1"]);
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            ok(lab.exec(g, &["sysctl", "-qw", key]), "sysctl");
        }
        lab
    }

    fn truncate(&mut self, created: usize) {
        let names = [&mut self.cli, &mut self.gw, &mut self.srv];
        for name in names.into_iter().skip(created) {
            name.clear();
        }
    }

    fn ip(&self, args: &[&str]) {
        ok(run("ip", args), &format!("ip {}", args.join(" ")));
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `portcullis netfilter ARGS` inside the gateway namespace.
    fn portcullis(&self, args: &[&str]) -> Output {
        let bin = portcullis_bin();
        let mut full = vec![bin.to_str().unwrap(), "netfilter"];
        full.extend_from_slice(args);
        self.exec(&self.gw, &full)
    }

    fn write_config(&self, text: &str) -> String {
        let path = self.dir.path().join("portcullis.toml");
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// A banner listener in `ns` for IPv4 and IPv6: one dual-stack TCP socket, or two UDP
    /// sockets. socat's forking UDP listener hands its socket to the child of the first
    /// datagram, which can swallow a second one arriving at the same moment; separate sockets
    /// per family keep the parallel v4 and v6 probes apart.
    fn listen(&mut self, ns: &str, proto: &str, port: u16, banner: &str) {
        let addrs = match proto {
            "tcp" => vec![format!("TCP6-LISTEN:{port},fork,reuseaddr,ipv6only=0")],
            _ => vec![
                format!("UDP4-RECVFROM:{port},fork"),
                format!("UDP6-RECVFROM:{port},fork,ipv6only=1"),
            ],
        };
        let system = format!("SYSTEM:echo {banner} peer=$SOCAT_PEERADDR");
        for addr in addrs {
            let child = Command::new("ip")
                .args(["netns", "exec", ns, "socat", &addr, &system])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.children.push(child);
        }
    }

    /// Waits until `ss` in `ns` shows every listener.
    fn wait_listening(&self, ns: &str, tcp: &[u16], udp: &[u16]) {
        for _ in 0..100 {
            let t = String::from_utf8_lossy(&self.exec(ns, &["ss", "-Hltn"]).stdout).into_owned();
            let u = String::from_utf8_lossy(&self.exec(ns, &["ss", "-Hlun"]).stdout).into_owned();
            let has = |text: &str, p: &u16| text.contains(&format!(":{p} "));
            if tcp.iter().all(|p| has(&t, p)) && udp.iter().all(|p| has(&u, p)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("listeners in {ns} did not come up");
    }

    /// Connects from `from` to `host:port`; the banner, or `None` when nothing answered.
    ///
    /// UDP is tried three times, as a resolver would: single socat UDP exchanges through the
    /// lab were occasionally lost even with no rules loaded. A blocked port stays silent however
    /// often it is asked.
    fn probe(&self, from: &str, proto: &str, host: &str, port: u16) -> Option<String> {
        let tries = if proto == "udp" { 3 } else { 1 };
        (0..tries).find_map(|_| self.probe_once(from, proto, host, port))
    }

    fn probe_once(&self, from: &str, proto: &str, host: &str, port: u16) -> Option<String> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let target = match proto {
            "tcp" => format!("TCP:{host}:{port},connect-timeout=2"),
            _ => format!("UDP:{host}:{port}"),
        };
        // -t3: after our side's EOF socat would otherwise give the answer only 0.5 s, which a
        // busy machine misses; -T3 bounds a silent (blocked) UDP probe.
        let child = Command::new("ip")
            .args([
                "netns", "exec", from, "timeout", "10", "socat", "-t3", "-T3", "-", &target,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // UDP needs a datagram to answer; TCP listeners speak first and ignore it.
        let mut child = child;
        if proto == "udp" {
            use std::io::Write as _;
            let _ = child.stdin.take().unwrap().write_all(b"q\n");
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!text.is_empty()).then_some(text)
    }

    /// Probes until every case answers (neighbour discovery and listeners warming up), or
    /// fails after a few seconds: the baseline that makes a later silence meaningful.
    fn reachable(&self, cases: &[(&str, &str, u16)]) {
        let mut last = Vec::new();
        for _ in 0..10 {
            last = self.probes(cases);
            if last.iter().all(Option::is_some) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let report: Vec<_> = cases.iter().zip(&last).collect();
        panic!("baseline without rules: {report:?}");
    }

    /// [`Lab::probes`], asking again (up to twice) the cases that should have answered but were
    /// silent: on a loaded machine a probe can miss its answer, while a port the firewall blocks
    /// stays silent however often it is asked, so this cannot hide a wrong block or pass.
    fn probes_against(
        &self,
        cases: &[(&str, &str, u16)],
        want: &[Option<&str>],
    ) -> Vec<Option<String>> {
        let mut got = self.probes(cases);
        for _ in 0..2 {
            let silent: Vec<usize> = (0..cases.len())
                .filter(|&i| got[i].is_none() && want.get(i).is_some_and(Option::is_some))
                .collect();
            if silent.is_empty() {
                break;
            }
            let again: Vec<_> = silent.iter().map(|&i| cases[i]).collect();
            for (i, answer) in silent.into_iter().zip(self.probes(&again)) {
                got[i] = answer;
            }
        }
        got
    }

    /// Runs many probes from the client at once (blocked ones each wait for a timeout).
    fn probes(&self, cases: &[(&str, &str, u16)]) -> Vec<Option<String>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = cases
                .iter()
                .map(|(proto, host, port)| {
                    s.spawn(move || self.probe(&self.cli, proto, host, *port))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// The gateway's whole ruleset in the views nft and iptables give of it.
    fn ruleset(&self) -> String {
        let mut all = ok(
            self.exec(&self.gw, &["nft", "list", "ruleset"]),
            "nft list ruleset",
        );
        for save in ["iptables-save", "ip6tables-save"] {
            let text = ok(self.exec(&self.gw, &[save]), save);
            all.push_str(&strip_save_noise(&text));
        }
        all
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.cli, &self.gw, &self.srv] {
            if !ns.is_empty() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

/// iptables-save output without its timestamp comments and packet counters.
fn strip_save_noise(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The address a listener reported (`peer=...`), v4-mapped addresses unmapped.
fn peer(banner: &str) -> IpAddr {
    let raw = banner.split("peer=").nth(1).unwrap().trim();
    let raw = raw.trim_start_matches('[').trim_end_matches(']');
    raw.parse::<IpAddr>()
        .unwrap_or_else(|e| panic!("{raw}: {e}"))
        .to_canonical()
}

fn lab_config(extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"10.77.1.1:3128\", \"[fd77:1::1]:3128\"]\n\n\
         [netfilter]\nmode = \"gateway\"\nlan_interfaces = [\"eth0\"]\n\
         lan_networks = [\"10.77.1.0/24\", \"fd77:1::/64\"]\nweb_action = \"reject\"\n\
         host_services = []\n{extra}\n\
         [[netfilter.direct]]\nservices = [\"outlook\"]\n"
    )
}

const SRV_TCP: &[u16] = &[25, 465, 587, 993, 389, 636, 3268, 80, 443, 8443, 135];
const SRV_UDP: &[u16] = &[53, 88];

/// Lab with banner listeners: every server port, the proxy port 3128 and an unrelated 8080 on
/// the gateway, and 7000 on the client (for connections the server opens).
fn lab_with_listeners(gw_extra: &[u16]) -> Lab {
    let mut lab = Lab::new();
    let (cli, gw, srv) = (lab.cli.clone(), lab.gw.clone(), lab.srv.clone());
    for &p in SRV_TCP {
        lab.listen(&srv, "tcp", p, &format!("{p}-ok"));
    }
    for &p in SRV_UDP {
        lab.listen(&srv, "udp", p, &format!("{p}-ok"));
    }
    let mut gw_tcp = vec![3128, 8080];
    gw_tcp.extend_from_slice(gw_extra);
    for &p in &gw_tcp {
        lab.listen(&gw, "tcp", p, &format!("gw{p}-ok"));
    }
    lab.listen(&cli, "tcp", 7000, "cli-ok");
    lab.wait_listening(&srv, SRV_TCP, SRV_UDP);
    lab.wait_listening(&gw, &gw_tcp, &[]);
    lab.wait_listening(&cli, &[7000], &[]);
    lab
}

fn expect(cases: &[(&str, &str, u16)], got: &[Option<String>], want: &[Option<&str>]) {
    let mut failures = Vec::new();
    for ((case, got), want) in cases.iter().zip(got).zip(want) {
        let fine = match (got, want) {
            (Some(g), Some(w)) => g.starts_with(w),
            (None, None) => true,
            _ => false,
        };
        if !fine {
            failures.push(format!("{case:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The issue's gateway scenario for one backend.
fn gateway_scenario(backend: Backend) {
    if !lab_available() {
        return;
    }
    let lab = lab_with_listeners(&[]);
    let config = lab.write_config(&lab_config(""));

    // Baseline without rules: every listener answers, so a later silence is the firewall's doing.
    let cases: Vec<(&str, &str, u16)> = vec![
        ("tcp", "10.77.2.2", 25),
        ("tcp", "10.77.2.2", 465),
        ("tcp", "10.77.2.2", 587),
        ("tcp", "10.77.2.2", 993),
        ("tcp", "10.77.2.2", 389),
        ("tcp", "10.77.2.2", 636),
        ("tcp", "10.77.2.2", 3268),
        ("udp", "10.77.2.2", 53),
        ("udp", "10.77.2.2", 88),
        ("tcp", "fd77:2::2", 25),
        ("tcp", "fd77:2::2", 993),
        ("udp", "fd77:2::2", 53),
        ("tcp", "10.77.1.1", 3128),
        ("tcp", "fd77:1::1", 3128),
        ("tcp", "10.77.2.2", 80),
        ("tcp", "10.77.2.2", 443),
        ("tcp", "10.77.2.2", 8443),
        ("tcp", "fd77:2::2", 80),
        ("tcp", "fd77:2::2", 443),
        ("tcp", "10.77.1.1", 8080),
    ];
    lab.reachable(&cases);

    // Pre-existing rules of the admin that apply/remove must leave alone.
    for cmd in [
        "add table inet admin",
        "add chain inet admin admin_forward { type filter hook forward priority 10; policy accept; }",
        "add rule inet admin admin_forward ip saddr 10.77.1.99 counter",
    ] {
        ok(lab.exec(&lab.gw, &["nft", cmd]), cmd);
    }
    for (tool, table, chain, src) in [
        ("iptables", "filter", "FORWARD", "10.77.1.99"),
        ("iptables", "filter", "INPUT", "10.77.1.99"),
        ("ip6tables", "filter", "FORWARD", "fd77:1::99"),
        ("ip6tables", "filter", "INPUT", "fd77:1::99"),
    ] {
        ok(
            lab.exec(
                &lab.gw,
                &[tool, "-t", table, "-A", chain, "-s", src, "-j", "ACCEPT"],
            ),
            tool,
        );
    }
    let before = lab.ruleset();

    for _ in 0..2 {
        ok(
            lab.portcullis(&["apply", "--config", &config, "--format", backend.arg()]),
            "apply",
        );
    }
    let applied = lab.ruleset();
    match backend {
        Backend::Nft => {
            assert_eq!(
                applied.matches("table inet portcullis {").count(),
                1,
                "{applied}"
            );
            assert_eq!(
                applied.matches("chain forward_lan {").count(),
                1,
                "{applied}"
            );
        }
        Backend::Iptables => {
            for jump in [
                "-A FORWARD -j PORTCULLIS-FORWARD",
                "-A INPUT -j PORTCULLIS-INPUT",
            ] {
                assert_eq!(
                    applied.matches(jump).count(),
                    2,
                    "one per family:\n{applied}"
                );
            }
        }
    }
    assert!(applied.contains("table inet admin"), "foreign table kept");

    let want: Vec<Option<&str>> = vec![
        Some("25-ok"),
        Some("465-ok"),
        Some("587-ok"),
        Some("993-ok"),
        Some("389-ok"),
        Some("636-ok"),
        Some("3268-ok"),
        Some("53-ok"),
        Some("88-ok"),
        Some("25-ok"),
        Some("993-ok"),
        Some("53-ok"),
        Some("gw3128-ok"),
        Some("gw3128-ok"),
        None, // web directly: rejected, use the proxy
        None,
        None, // not a direct service: default drop
        None,
        None,
        None, // the gateway's other ports: input policy drop
    ];
    let got = lab.probes_against(&cases, &want);
    expect(&cases, &got, &want);
    // Direct clients see the server's own address (no NAT on the direct path).
    assert_eq!(
        peer(got[0].as_deref().unwrap()),
        "10.77.1.2".parse::<IpAddr>().unwrap()
    );

    ok(
        lab.portcullis(&["remove", "--format", backend.arg()]),
        "remove",
    );
    let after = lab.ruleset();
    assert_eq!(after, before, "remove must restore the ruleset exactly");
    let restored = lab.probes(&cases[14..15]);
    assert!(restored[0].is_some(), "tcp/80 open again after remove");
}

#[test]
fn gateway_nft_passes_direct_services_and_blocks_web() {
    gateway_scenario(Backend::Nft);
}

#[test]
fn gateway_iptables_passes_direct_services_and_blocks_web() {
    gateway_scenario(Backend::Iptables);
}

/// KB 291615: the client reaches the server's private address through the public one on any
/// port, and connections the server opens come out as the public address.
fn nat_scenario(backend: Backend) {
    if !lab_available() {
        return;
    }
    let lab = lab_with_listeners(&[]);
    let nat = "\n[[netfilter.one_to_one_nat]]\nname = \"exchange\"\npublic = \"10.77.9.25\"\nprivate = \"10.77.2.2\"\n\
               [[netfilter.one_to_one_nat]]\nname = \"exchange6\"\npublic = \"fd77:9::25\"\nprivate = \"fd77:2::2\"\n";
    let config = lab.write_config(&(lab_config("") + nat));
    let cases: Vec<(&str, &str, u16)> = vec![
        ("tcp", "10.77.9.25", 135),
        ("tcp", "10.77.9.25", 80),
        ("tcp", "10.77.9.25", 8443),
        ("tcp", "10.77.9.25", 25),
        ("udp", "10.77.9.25", 53),
        ("tcp", "fd77:9::25", 135),
        ("tcp", "fd77:9::25", 8443),
        ("tcp", "10.77.2.2", 8443), // the private address itself stays closed
    ];
    lab.reachable(&[("tcp", "10.77.2.2", 135), ("tcp", "fd77:2::2", 135)]);
    let before = lab.probes(&[cases[0], cases[5]]);
    assert_eq!(
        before,
        [None, None],
        "nothing at the public addresses before the NAT rules"
    );

    ok(
        lab.portcullis(&["apply", "--config", &config, "--format", backend.arg()]),
        "apply",
    );
    let want = [
        Some("135-ok"),
        Some("80-ok"),
        Some("8443-ok"),
        Some("25-ok"),
        Some("53-ok"),
        Some("135-ok"),
        Some("8443-ok"),
        None,
    ];
    let got = lab.probes_against(&cases, &want);
    expect(&cases, &got, &want);
    assert_eq!(
        peer(got[0].as_deref().unwrap()),
        "10.77.1.2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        peer(got[5].as_deref().unwrap()),
        "fd77:1::2".parse::<IpAddr>().unwrap()
    );

    // The server's own connection to the client comes out through the public address.
    for (client, public) in [("10.77.1.2", "10.77.9.25"), ("fd77:1::2", "fd77:9::25")] {
        let banner = lab.probe(&lab.srv, "tcp", client, 7000);
        let banner = banner.unwrap_or_else(|| panic!("server could not reach client {client}"));
        assert!(banner.starts_with("cli-ok"), "{banner}");
        assert_eq!(peer(&banner), public.parse::<IpAddr>().unwrap(), "{banner}");
    }
    ok(
        lab.portcullis(&["remove", "--format", backend.arg()]),
        "remove",
    );
}

#[test]
fn one_to_one_nat_nft_maps_every_port_both_ways() {
    nat_scenario(Backend::Nft);
}

#[test]
fn one_to_one_nat_iptables_maps_every_port_both_ways() {
    nat_scenario(Backend::Iptables);
}

/// Transparent interception: LAN web goes to the gateway's listeners; the listeners themselves
/// only accept redirected connections.
fn intercept_scenario(backend: Backend) {
    if !lab_available() {
        return;
    }
    let lab = lab_with_listeners(&[3129, 3130]);
    // The redirects go to the transparent listeners' ports (socat stands in for them here;
    // tests/tests/transparent.rs runs the real ones).
    let extra = "[netfilter.intercept]\nenabled = true\n";
    let listeners = "[server]\ntransparent_http_listen = [\"0.0.0.0:3129\", \"[::]:3129\"]\n\
                     transparent_tls_listen = [\"0.0.0.0:3130\", \"[::]:3130\"]\n";
    let config = lab.write_config(&lab_config(extra).replacen("[server]\n", listeners, 1));
    lab.reachable(&[("tcp", "10.77.2.2", 80), ("tcp", "fd77:2::2", 80)]);
    ok(
        lab.portcullis(&["apply", "--config", &config, "--format", backend.arg()]),
        "apply",
    );
    let cases: Vec<(&str, &str, u16)> = vec![
        ("tcp", "10.77.2.2", 80),
        ("tcp", "10.77.2.2", 443),
        ("tcp", "fd77:2::2", 80),
        ("tcp", "10.77.2.2", 993),
        ("tcp", "10.77.1.1", 3129), // not redirected: refused
    ];
    let want = [
        Some("gw3129-ok"),
        Some("gw3130-ok"),
        Some("gw3129-ok"),
        Some("993-ok"),
        None,
    ];
    let got = lab.probes_against(&cases, &want);
    expect(&cases, &got, &want);
}

#[test]
fn intercept_nft_redirects_lan_web_to_the_proxy() {
    intercept_scenario(Backend::Nft);
}

#[test]
fn intercept_iptables_redirects_lan_web_to_the_proxy() {
    intercept_scenario(Backend::Iptables);
}

/// Runs `args` in a fresh, throw-away network namespace (root: `unshare -n`; otherwise a user
/// namespace, `unshare -rn`), so checking never depends on or touches the host's firewall.
fn in_fresh_netns(args: &[&str], stdin_file: &Path) -> Output {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let mut cmd = Command::new("unshare");
    cmd.arg(if root { "-n" } else { "-rn" }).args(args);
    cmd.stdin(std::fs::File::open(stdin_file).unwrap());
    cmd.output().unwrap()
}

fn checker_available() -> bool {
    let out = Command::new("unshare").args(["-rn", "true"]).output();
    let fine = out.is_ok_and(|o| o.status.success())
        && ["nft", "iptables-restore", "ip6tables-restore"]
            .iter()
            .all(|t| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
    if !fine {
        if std::env::var_os("PORTCULLIS_REQUIRE_NETNS").is_some_and(|v| v == "1") {
            panic!(
                "PORTCULLIS_REQUIRE_NETNS=1 but nft/iptables-restore or `unshare -rn` are missing"
            );
        }
        eprintln!("SKIP: validating rules needs nft, iptables-restore, ip6tables-restore and `unshare -rn`");
    }
    fine
}

/// Every golden file is accepted by the real tools: `nft -c -f` and `iptables-restore --test`.
#[test]
fn golden_files_pass_the_real_tools() {
    if !checker_available() {
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut checked = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let args: &[&str] = if name.ends_with(".nft") {
            &["nft", "-c", "-f", "-"]
        } else if name.ends_with(".v4.rules") {
            &["iptables-restore", "--noflush", "--test"]
        } else if name.ends_with(".v6.rules") {
            &["ip6tables-restore", "--noflush", "--test"]
        } else {
            continue;
        };
        ok(
            in_fresh_netns(args, f),
            &format!("{} < {name}", args.join(" ")),
        );
        checked += 1;
    }
    assert_eq!(checked, 9, "3 configs x (nft, v4, v6)");

    // The checkers do reject a broken file, so the passes above mean something.
    let broken = golden_dir().join("gateway.v4.rules");
    let text = std::fs::read_to_string(&broken)
        .unwrap()
        .replace("--dports 25,", "--dports 25,1,2,3,");
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), text).unwrap();
    let out = in_fresh_netns(&["iptables-restore", "--noflush", "--test"], tmp.path());
    assert!(!out.status.success(), "17 ports in one multiport must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("too many ports"));
}

/// The binary renders exactly the golden files (the policy crate's golden test checks the
/// library; this checks the CLI's config loading and listener facts).
#[test]
fn cli_render_matches_golden_files() {
    for name in ["default", "gateway", "host"] {
        let config = golden_dir().join(format!("{name}.toml"));
        for (format, ext) in [
            ("nft", "nft"),
            ("iptables", "v4.rules"),
            ("ip6tables", "v6.rules"),
        ] {
            let out = Command::new(portcullis_bin())
                .args(["netfilter", "render", "--format", format, "--config"])
                .arg(&config)
                .output()
                .unwrap();
            let text = ok(out, &format!("render {name} {format}"));
            let golden =
                std::fs::read_to_string(golden_dir().join(format!("{name}.{ext}"))).unwrap();
            assert!(
                text == golden,
                "{name}.{ext} differs from `portcullis netfilter render`"
            );
        }
    }
}

/// The embedded default config's `[netfilter]` section spells out the defaults: rendering
/// without `--config` equals the golden file for an empty section.
#[test]
fn embedded_default_renders_the_default_golden_file() {
    let out = Command::new(portcullis_bin())
        .args(["netfilter", "render"])
        .output()
        .unwrap();
    let text = ok(out, "render without --config");
    let golden = std::fs::read_to_string(golden_dir().join("default.nft")).unwrap();
    assert!(
        text == golden,
        "embedded default differs from golden/default.nft"
    );
}

#[test]
fn cli_reports_config_errors_by_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        (
            "[netfilter]\n[[netfilter.direct]]\nservices = [\"smpt\"]\n",
            "netfilter.direct[0].services[0]: unknown service or group \"smpt\"",
        ),
        ("[netfilter]\nlan_iface = []\n", "netfilter.lan_iface"),
        (
            "[netfilter.services.web]\ntcp = [443]\n[[netfilter.direct]]\nservices = [\"web\"]\n",
            "bypasses the proxy",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(portcullis_bin())
            .args(["netfilter", "render", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "want {needle:?}: {err}");
        assert!(err.contains("bad.toml"), "{err}");
    }
}

/// `check` runs the real tools: the golden configs pass, and a config the kernel side rejects
/// (an account that does not exist) fails for both backends.
#[test]
fn check_command_uses_the_real_tools() {
    if !lab_available() {
        return;
    }
    let lab = Lab::new();
    for backend in ["nft", "iptables"] {
        for name in ["default", "gateway", "host"] {
            let config = golden_dir().join(format!("{name}.toml"));
            let config = config.to_str().unwrap();
            ok(
                lab.portcullis(&["check", "--config", config, "--format", backend]),
                "check",
            );
        }
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/netfilter/gateway.example.toml");
        let example = example.to_str().unwrap();
        ok(
            lab.portcullis(&["check", "--config", example, "--format", backend]),
            "check example",
        );
        let bad =
            lab.write_config("[netfilter]\nmode = \"host\"\nproxy_user = \"no-such-user-pcnf\"\n");
        let out = lab.portcullis(&["check", "--config", &bad, "--format", backend]);
        assert!(
            !out.status.success(),
            "{backend}: unknown user must fail the check"
        );
    }
    let empty = ok(lab.exec(&lab.gw, &["nft", "list", "ruleset"]), "list");
    assert!(
        !empty.contains("portcullis"),
        "check must not load anything: {empty}"
    );
}
