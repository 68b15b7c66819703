//! Transparent interception end to end (issue 18), in network namespaces with the rules
//! `portcullis netfilter apply` loads (nftables, and once with iptables):
//!
//! ```text
//!  cli eth0 10.88.1.2 (exempt), 10.88.1.3, fd88:1::2 ── gw eth0 10.88.1.1 fd88:1::1   portcullis
//!                                                      gw eth1 10.88.2.1 fd88:2::1 ── org eth0 10.88.2.2, 10.88.2.3, fd88:2::2
//! ```
//!
//! The client has no proxy setting; curl's `--resolve` plays its DNS. The origin (Python's
//! http.server, plain on 80 and TLS on 443 with a certificate from a lab CA, plus a UDP echo on
//! 443) answers `origin-http host=<Host>` / `origin-tls host=<Host>`. Needs root and the tools
//! below; prints `SKIP` without them unless `PORTCULLIS_REQUIRE_NETNS=1` (CI), which fails.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_e2e::{htpasswd, portcullis_bin};

const TOOLS: &[&str] = &[
    "ip",
    "nft",
    "iptables-restore",
    "ip6tables-restore",
    "curl",
    "python3",
    "openssl",
    "htpasswd",
];

fn lab_available() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| !sh(&format!("command -v {t}")).status.success())
        .collect();
    let why = match (root, missing.is_empty()) {
        (true, true) => return true,
        (false, _) => "not running as root".to_owned(),
        (true, false) => format!("missing tools: {missing:?}"),
    };
    if std::env::var_os("PORTCULLIS_REQUIRE_NETNS").is_some_and(|v| v == "1") {
        panic!("PORTCULLIS_REQUIRE_NETNS=1 but the transparent lab cannot run: {why}");
    }
    eprintln!("SKIP: transparent lab test needs root, network namespaces and {TOOLS:?}: {why}");
    false
}

fn sh(script: &str) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn must(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three namespaces, an origin, the proxy; all removed on drop, even on panic.
struct Lab {
    prefix: String,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

const ORIGIN: &str = r#"
import http.server, socket, ssl, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("%s host=%s\n" % (self.server.label, self.headers.get("Host"))).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
def serve(port, label, ctx):
    srv = S(("::", port), H); srv.label = label
    if ctx: srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()
def udpecho(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", port))
    while True:
        d, a = s.recvfrom(2048); s.sendto(b"echo:" + d, a)
if sys.argv[1] == "udpprobe":
    s = socket.socket(socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2); s.connect((sys.argv[2], int(sys.argv[3]))); s.send(b"ping")
    try: print(s.recv(100).decode())
    except ConnectionRefusedError: print("refused")
    except socket.timeout: print("timeout")
    sys.exit()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[2], sys.argv[3])
for t in [(serve, (80, "origin-http", None)), (serve, (443, "origin-tls", ctx)), (udpecho, (443,))]:
    threading.Thread(target=t[0], args=t[1], daemon=True).start()
print("ready", flush=True); threading.Event().wait()
"#;

const CERTS: &str = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout originCA.key \
  -out originCA.pem -days 2 -subj "/CN=Lab Origin CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout origin.key \
  -out origin.csr -subj "/CN=www.lab.test" 2>/dev/null
printf 'subjectAltName=DNS:www.lab.test,DNS:outlook.office365.com,DNS:denied.lab.test\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' > origin.ext
openssl x509 -req -in origin.csr -CA originCA.pem -CAkey originCA.key -CAcreateserial \
  -out origin.pem -days 2 -extfile origin.ext 2>/dev/null
"#;

impl Lab {
    fn new() -> Lab {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("ptr{}x{n}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab {
            prefix,
            dir,
            children: Vec::new(),
        };
        lab.wire();
        lab
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn wire(&self) {
        let (c, g, s) = (self.ns("cli"), self.ns("gw"), self.ns("org"));
        let mut script = String::from("set -e\n");
        for n in [&c, &g, &s] {
            script.push_str(&format!(
                "ip netns add {n}\nip -n {n} link set lo up\n\
                 ip netns exec {n} sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0\n"
            ));
        }
        script.push_str(&format!(
            "ip link add eth0 netns {c} type veth peer name eth0 netns {g}\n\
             ip link add eth1 netns {g} type veth peer name eth0 netns {s}\n\
             ip -n {c} addr add 10.88.1.2/24 dev eth0\nip -n {c} addr add 10.88.1.3/24 dev eth0\n\
             ip -n {c} addr add fd88:1::2/64 dev eth0\nip -n {c} link set eth0 up\n\
             ip -n {g} addr add 10.88.1.1/24 dev eth0\nip -n {g} addr add fd88:1::1/64 dev eth0\n\
             ip -n {g} link set eth0 up\n\
             ip -n {g} addr add 10.88.2.1/24 dev eth1\nip -n {g} addr add fd88:2::1/64 dev eth1\n\
             ip -n {g} link set eth1 up\n\
             ip -n {s} addr add 10.88.2.2/24 dev eth0\nip -n {s} addr add 10.88.2.3/24 dev eth0\n\
             ip -n {s} addr add fd88:2::2/64 dev eth0\nip -n {s} link set eth0 up\n\
             ip -n {c} route add default via 10.88.1.1\nip -n {c} -6 route add default via fd88:1::1\n\
             ip -n {s} route add default via 10.88.2.1\nip -n {s} -6 route add default via fd88:2::1\n\
             ip netns exec {g} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1\n"
        ));
        must(sh(&script), "lab wiring");
    }

    /// Starts `args` in namespace `role` with stdout and stderr to `<dir>/<log>`.
    fn spawn(&mut self, role: &str, args: &[&str], log: &str) {
        let out = std::fs::File::create(self.path(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    fn wait_for(&self, log: &str, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(self.path(log)).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in {log}:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exec(&self, role: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// curl from the client namespace: `(status, body)`; status 0 when no HTTP answer came.
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let mut all = vec!["curl", "-sS", "-m", "10", "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        let out = self.exec("cli", &all);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let err = String::from_utf8_lossy(&out.stderr);
        (code.trim().parse().unwrap_or(0), format!("{body}{err}"))
    }

    fn udp_probe(&self, addr: &str) -> String {
        let out = self.exec(
            "cli",
            &["python3", &self.path("origin.py"), "udpprobe", addr, "443"],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The access log once `done` holds for it (lines are written by a task of their own),
    /// or as it is after 10 s.
    fn access_log_until(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(self.path("access.log")).unwrap_or_default();
            if done(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for role in ["cli", "gw", "org"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .output();
        }
    }
}

/// The proxy's config: transparent listeners on both families, authentication with one
/// exempt client address, a deny-by-default policy that allows the lab by name and by one
/// address, and `[resolve]` as the proxy's DNS.
fn config(lab: &Lab) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:3128"]
transparent_http_listen = ["0.0.0.0:3129", "[::]:3129"]
transparent_tls_listen = ["0.0.0.0:3130", "[::]:3130"]
data_dir = "{data}"
[admin]
listen = "127.0.0.1:9464"
[access_log]
path = "{log}"
[upstream]
deny_networks = []
system_resolver = false
[m365]
fetch = false
[tls]
upstream_ca_file = "{ca}"
[auth]
schemes = ["basic"]
htpasswd = "{users}"
exempt_clients = ["10.88.1.2/32", "fd88:1::2/128"]
[resolve]
"www.lab.test" = ["10.88.2.2", "fd88:2::2"]
"outlook.office365.com" = ["10.88.2.2", "fd88:2::2"]
"denied.lab.test" = ["10.88.2.2"]
[policy.default]
action = "deny"
reason = "not on the lab list"
[[policy.rules]]
name = "lab-www"
host = ["www.lab.test"]
action = "inspect"
[[policy.rules]]
name = "lab-denied"
host = ["denied.lab.test"]
action = "deny"
reason = "denied in the lab"
[[policy.rules]]
name = "lab-address"
host = ["10.88.2.2", "fd88:2::2"]
action = "inspect"
[netfilter]
mode = "gateway"
lan_interfaces = ["eth0"]
lan_networks = ["10.88.1.0/24", "fd88:1::/64"]
host_services = []
[netfilter.intercept]
enabled = true
"#,
        data = lab.path("data"),
        log = lab.path("access.log"),
        ca = lab.path("originCA.pem"),
        users = lab.path("users"),
    )
}

/// Lab, origin and proxy up, the rules applied with `backend`; the UDP baseline is checked
/// before the rules exist.
fn start(backend: &str) -> Lab {
    let mut lab = Lab::new();
    std::fs::write(lab.path("origin.py"), ORIGIN).unwrap();
    must(
        sh(&format!("cd {} && {CERTS}", lab.dir.path().display())),
        "certificates",
    );
    htpasswd(Path::new(&lab.path("users")), "-B", "u", "pw");
    let (py, cert, key) = (
        lab.path("origin.py"),
        lab.path("origin.pem"),
        lab.path("origin.key"),
    );
    lab.spawn("org", &["python3", &py, "serve", &cert, &key], "origin.log");
    lab.wait_for("origin.log", "ready");
    assert_eq!(
        lab.udp_probe("10.88.2.2"),
        "echo:ping",
        "baseline: QUIC reaches the origin"
    );
    let config = lab.path("portcullis.toml");
    std::fs::write(&config, config_text(&lab)).unwrap();
    let bin = portcullis_bin().display().to_string();
    lab.spawn("gw", &[&bin, "run", "--config", &config], "proxy.log");
    lab.wait_for("proxy.log", " ready: ");
    must(
        lab.exec(
            "gw",
            &[
                &bin,
                "netfilter",
                "apply",
                "--config",
                &config,
                "--format",
                backend,
            ],
        ),
        "netfilter apply",
    );
    lab
}

fn config_text(lab: &Lab) -> String {
    config(lab)
}

fn proxy_ca(lab: &Lab) -> String {
    lab.path("data/ca.pem")
}

/// HTTP by address and by a verified name, to the original destination; the log says
/// `ORIGINAL_DST`.
fn http_reaches_the_original_destination(lab: &Lab) {
    let (status, body) = lab.curl(&["http://10.88.2.2/"]);
    assert_eq!(
        (status, body.as_str()),
        (200, "origin-http host=10.88.2.2\n")
    );
    let (status, body) = lab.curl(&[
        "--resolve",
        "www.lab.test:80:10.88.2.2",
        "http://www.lab.test/a?b",
    ]);
    assert_eq!(
        (status, body.as_str()),
        (200, "origin-http host=www.lab.test\n")
    );
    let line = |l: &str| {
        l.contains("TCP_MISS/200")
            && l.contains("GET http://www.lab.test/a?b")
            && l.contains("ORIGINAL_DST/10.88.2.2")
    };
    let log = lab.access_log_until(|log| log.lines().any(line));
    assert!(log.lines().any(line), "{log}");
}

/// TLS: inspected by name (a leaf from the proxy CA, which the origin CA does not verify),
/// the Outlook name tunnelled (the origin's own leaf), a denied name refused inside TLS.
fn tls_tunnel_inspect_deny(lab: &Lab, v6: bool) {
    let ip = if v6 { "[fd88:2::2]" } else { "10.88.2.2" };
    let ca = proxy_ca(lab);
    let www = format!("www.lab.test:443:{ip}");
    let (status, body) = lab.curl(&["--cacert", &ca, "--resolve", &www, "https://www.lab.test/"]);
    assert_eq!(
        (status, body.as_str()),
        (200, "origin-tls host=www.lab.test\n")
    );
    let origin_ca = lab.path("originCA.pem");
    let (status, err) = lab.curl(&[
        "--cacert",
        &origin_ca,
        "--resolve",
        &www,
        "https://www.lab.test/",
    ]);
    assert_eq!(
        status, 0,
        "inspected: the origin CA must not verify the leaf: {err}"
    );
    let outlook = format!("outlook.office365.com:443:{ip}");
    let (status, body) = lab.curl(&[
        "--cacert",
        &origin_ca,
        "--resolve",
        &outlook,
        "https://outlook.office365.com/",
    ]);
    assert_eq!(
        (status, body.as_str()),
        (200, "origin-tls host=outlook.office365.com\n")
    );
    if !v6 {
        let denied = "denied.lab.test:443:10.88.2.2";
        let (status, body) = lab.curl(&[
            "--cacert",
            &ca,
            "--resolve",
            denied,
            "https://denied.lab.test/",
        ]);
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("denied in the lab"), "{body}");
    }
}

#[test]
fn nft_redirect_serves_http_and_tls_by_the_original_destination() {
    if !lab_available() {
        return;
    }
    let lab = start("nft");
    http_reaches_the_original_destination(&lab);
    tls_tunnel_inspect_deny(&lab, false);
    let tunnel = |l: &str| {
        l.contains("TCP_TUNNEL/200")
            && l.contains("CONNECT outlook.office365.com:443")
            && l.contains("ORIGINAL_DST/10.88.2.2")
    };
    let inspected = |l: &str| l.contains("NONE/200") && l.contains("CONNECT www.lab.test:443");
    let log = lab.access_log_until(|log| log.lines().any(tunnel) && log.lines().any(inspected));
    assert!(log.lines().any(tunnel), "{log}");
    assert!(log.lines().any(inspected), "{log}");

    // IPv6: IP6T_SO_ORIGINAL_DST on the v6-only listeners.
    let (status, body) = lab.curl(&["http://[fd88:2::2]/"]);
    assert_eq!(
        (status, body.as_str()),
        (200, "origin-http host=[fd88:2::2]\n")
    );
    tls_tunnel_inspect_deny(&lab, true);

    // QUIC is rejected (ICMP port unreachable), so clients fall back to TCP.
    assert_eq!(lab.udp_probe("10.88.2.2"), "refused");
    assert_eq!(lab.udp_probe("fd88:2::2"), "refused");

    // Loop protection: a connection that was not redirected (made on the gateway itself to
    // the listener) names the listener as its destination and is closed unserved.
    let out = lab.exec("gw", &["curl", "-sS", "-m", "5", "http://10.88.1.1:3129/"]);
    assert!(!out.status.success(), "{out:?}");
    let metrics = must(
        lab.exec("gw", &["curl", "-sS", "http://127.0.0.1:9464/metrics"]),
        "metrics",
    );
    assert!(
        metrics.contains(
            "portcullis_transparent_connections_refused_total{listener=\"transparent_http\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_transparent_transactions_total{decision=\"tunnel\",listener=\"transparent_tls\"}"),
        "{metrics}"
    );
}

#[test]
fn nft_redirect_never_trusts_a_name_the_original_destination_does_not_have() {
    if !lab_available() {
        return;
    }
    let lab = start("nft");
    let ca = proxy_ca(&lab);
    // An Outlook SNI (tunnel, auth-exempt if believed) aimed at an address the policy denies:
    // decided on the address, refused inside TLS.
    let forged = "outlook.office365.com:443:10.88.2.3";
    let (status, body) = lab.curl(&[
        "--cacert",
        &ca,
        "--resolve",
        forged,
        "https://outlook.office365.com/",
    ]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not on the lab list"), "{body}");
    // The same with a Host header on plain HTTP, from the exempt client and the other one.
    for source in ["10.88.1.2", "10.88.1.3"] {
        let args = [
            "--interface",
            source,
            "-H",
            "Host: outlook.office365.com",
            "http://10.88.2.3/",
        ];
        let (status, body) = lab.curl(&args);
        assert_eq!(status, 403, "from {source}: {body}");
        assert!(
            body.contains("not on the lab list"),
            "from {source}: {body}"
        );
    }
    // The real name at its real address earns its exemption, even for a client that must
    // otherwise authenticate.
    let args = [
        "--interface",
        "10.88.1.3",
        "-H",
        "Host: outlook.office365.com",
        "http://10.88.2.2/",
    ];
    let (status, body) = lab.curl(&args);
    assert_eq!(
        (status, body.as_str()),
        (200, "origin-http host=outlook.office365.com\n")
    );

    // Authentication cannot be asked for: a client outside auth.exempt_clients going to a
    // destination that needs it is refused with a page saying why (HTTP, and inside TLS).
    let out = lab.exec(
        "cli",
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            "-i",
            "--interface",
            "10.88.1.3",
            "http://10.88.2.2/",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("transparent-auth-required"), "{text}");
    assert!(text.contains("proxy authentication"), "{text}");
    let www = "www.lab.test:443:10.88.2.2";
    let args = [
        "--interface",
        "10.88.1.3",
        "--cacert",
        &ca,
        "--resolve",
        www,
        "https://www.lab.test/",
    ];
    let (status, body) = lab.curl(&args);
    assert_eq!(status, 403, "{body}");
    let refusals = |log: &str| {
        log.lines()
            .filter(|l| l.contains("10.88.1.3") && l.contains("TCP_DENIED/403"))
            .count()
    };
    let log = lab.access_log_until(|log| refusals(log) >= 3);
    let refused = refusals(&log);
    // The plain request, the forged Host, and the request inside TLS: one line each.
    assert_eq!(refused, 3, "{log}");
    assert!(
        !log.contains("ORIGINAL_DST/10.88.2.3"),
        "the forged names reached their address: {log}"
    );
}

#[test]
fn iptables_redirect_serves_http_and_tls() {
    if !lab_available() {
        return;
    }
    let lab = start("iptables");
    http_reaches_the_original_destination(&lab);
    tls_tunnel_inspect_deny(&lab, false);
    assert_eq!(lab.udp_probe("10.88.2.2"), "refused");
}

/// `netfilter render` refuses a redirect to nothing, and otherwise redirects to the
/// listeners' own ports (the lines the README quotes).
#[test]
fn render_wires_redirects_to_the_transparent_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    let base = "[netfilter]\nlan_interfaces = [\"eth0\"]\n[netfilter.intercept]\nenabled = true\n";
    std::fs::write(&config, base).unwrap();
    let render = |format: &str| {
        Command::new(portcullis_bin())
            .args(["netfilter", "render", "--config"])
            .arg(&config)
            .args(["--format", format])
            .output()
            .unwrap()
    };
    let out = render("nft");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("netfilter.intercept.enabled") && err.contains("no transparent listener"),
        "{err}"
    );
    let listeners = "[server]\ntransparent_http_listen = [\"0.0.0.0:8129\", \"[::]:8129\"]\n\
                     transparent_tls_listen = [\"0.0.0.0:8130\", \"[::]:8130\"]\n";
    std::fs::write(&config, format!("{listeners}{base}")).unwrap();
    let nft = must(render("nft"), "render nft");
    for line in [
        "fib daddr type != local tcp dport 80 redirect to :8129",
        "fib daddr type != local tcp dport 443 redirect to :8130",
        "ct status dnat tcp dport { 8129, 8130 } accept",
        "udp dport 443 reject",
    ] {
        assert!(nft.contains(line), "{line}\n{nft}");
    }
    let v4 = must(render("iptables"), "render iptables");
    for line in [
        "-p tcp --dport 80 -m addrtype ! --dst-type LOCAL",
        "REDIRECT --to-ports 8129",
        "REDIRECT --to-ports 8130",
        "-p udp --dport 443",
    ] {
        assert!(v4.contains(line), "{line}\n{v4}");
    }
}
