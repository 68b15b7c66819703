#!/usr/bin/env python3
"""Helper for bench/run: clients the stock tools do not cover, output parsers, the report.

Subcommands (all print one JSON object on stdout unless noted):
  tls-conns   new TLS connections per second, direct or through a proxy (CONNECT + TLS + GET),
              with p50/p99 of connect-to-handshake-complete (--concurrency 1: blocking client)
  idle-conns  open N keep-alive HTTP connections through a proxy and hold them
  auth-conns  K connections through a proxy, each carrying M plain-HTTP requests, one after
              another; --scheme none|basic|negotiate (Negotiate: a fresh SPNEGO token from
              libgssapi_krb5 via ctypes on the first request of each connection only, as a
              browser does; Basic: the header on every request)
  stream-rss  run a command (a download, a wrk load) while sampling a process's VmRSS: before,
              peak, after (--out FILE: the command's output goes to FILE)
  cpu-ticks   utime+stime (clock ticks) of a process and its descendants (prints an integer)
  rss-kib     VmRSS of a process (prints an integer, KiB)
  watch-foreign / foreign-summary   CPU used by processes outside the bench while it runs
  parse-wrk / parse-hey / parse-curl   turn a tool's output into JSON (wrk: also Transfer/sec as MB/s)
  report      render RESULTS.md from the JSON-lines results file and the run's metadata
"""

import argparse
import asyncio
import json
import math
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time


# ---------------------------------------------------------------- /proc helpers

def _children_map():
    kids = {}
    for pid, (ppid, _comm, _ticks) in _proc_table().items():
        kids.setdefault(ppid, []).append(pid)
    return kids


def cpu_ticks(pid, tree=True):
    pids = [pid]
    if tree:
        kids = _children_map()
        i = 0
        while i < len(pids):
            pids.extend(kids.get(pids[i], []))
            i += 1
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        total += int(rest[11]) + int(rest[12])  # utime, stime (fields 14, 15)
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- TLS connection client

async def _read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    return head


async def _one_tls(args, ctx, name):
    """One connection: (CONNECT through the proxy,) TLS with SNI `name`, GET, read to EOF.

    Returns the seconds from the start of the TCP connect until the TLS handshake completed
    (through a proxy: connect + CONNECT + the proxy's certificate + handshake)."""
    t0 = time.perf_counter()
    if args.proxy:
        ph, pp = args.proxy.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(ph, int(pp))
        try:
            writer.write(
                f"CONNECT {name}:{args.port} HTTP/1.1\r\nHost: {name}:{args.port}\r\n\r\n".encode()
            )
            head = await _read_head(reader)
            status = head.split(b" ", 2)[1]
            if status != b"200":
                raise RuntimeError(f"CONNECT status {status.decode(errors='replace')}")
            await writer.start_tls(ctx, server_hostname=name)
        except BaseException:
            writer.close()
            raise
    else:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", args.port, ssl=ctx, server_hostname=name
        )
    handshake_s = time.perf_counter() - t0
    try:
        writer.write(
            f"GET {args.path} HTTP/1.1\r\nHost: {name}:{args.port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = await reader.read()  # to EOF (Connection: close)
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"response {data[:40]!r}")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:
            pass
    return handshake_s


def _pct(sorted_vals, q):
    """Nearest-rank percentile of an ascending list (None if empty)."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


async def _tls_main(args):
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.check_hostname = True
    names_single = args.single_name
    counter = {"next": args.start, "ok": 0, "err": 0}
    errors = {}
    handshakes = []
    deadline = time.monotonic() + args.duration
    t0 = time.monotonic()

    async def worker():
        while time.monotonic() < deadline:
            i = counter["next"]
            if not names_single and i >= args.count:
                return
            counter["next"] += 1
            name = names_single or f"{args.prefix}{i}.bench.test"
            try:
                handshakes.append(await asyncio.wait_for(_one_tls(args, ctx, name), 30))
                counter["ok"] += 1
            except Exception as e:  # noqa: BLE001 - counted and reported
                counter["err"] += 1
                k = f"{type(e).__name__}: {e}"[:120]
                errors[k] = errors.get(k, 0) + 1

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - t0
    return _tls_summary(args, counter["ok"], counter["err"], errors, handshakes, elapsed,
                        counter["next"] - args.start if not names_single else 1)


def _one_tls_sync(args, ctx, name):
    """`_one_tls` with blocking sockets: the handshake runs in OpenSSL without the event loop's
    round trips, so one-at-a-time latencies carry little client overhead."""
    t0 = time.perf_counter()
    if args.proxy:
        ph, pp = args.proxy.rsplit(":", 1)
        raw = socket.create_connection((ph, int(pp)), timeout=30)
    else:
        raw = socket.create_connection(("127.0.0.1", args.port), timeout=30)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if args.proxy:
            raw.sendall(f"CONNECT {name}:{args.port} HTTP/1.1\r\nHost: {name}:{args.port}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = raw.recv(4096)
                if not chunk:
                    raise RuntimeError("proxy closed the connection before the CONNECT response")
                head += chunk
            status = head.split(b" ", 2)[1]
            if status != b"200":
                raise RuntimeError(f"CONNECT status {status.decode(errors='replace')}")
        tls = ctx.wrap_socket(raw, server_hostname=name)  # the handshake happens here
        handshake_s = time.perf_counter() - t0
        with tls:
            tls.sendall(f"GET {args.path} HTTP/1.1\r\nHost: {name}:{args.port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"response {data[:40]!r}")
        return handshake_s
    finally:
        raw.close()


def _tls_sync_main(args):
    """One connection at a time (--concurrency 1); the same output as `_tls_main`."""
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.check_hostname = True
    ok = err = 0
    errors = {}
    handshakes = []
    i = args.start
    deadline = time.monotonic() + args.duration
    t0 = time.monotonic()
    while time.monotonic() < deadline and (args.single_name or i < args.count):
        name = args.single_name or f"{args.prefix}{i}.bench.test"
        i += 1
        try:
            handshakes.append(_one_tls_sync(args, ctx, name))
            ok += 1
        except Exception as e:  # noqa: BLE001 - counted and reported
            err += 1
            k = f"{type(e).__name__}: {e}"[:120]
            errors[k] = errors.get(k, 0) + 1
    return _tls_summary(args, ok, err, errors, handshakes, time.monotonic() - t0,
                        1 if args.single_name else i - args.start)


def _tls_summary(args, ok, err, errors, handshakes, elapsed, names_used):
    hs = sorted(handshakes)

    def ms(v):
        return None if v is None else round(v * 1e3, 3)

    return {
        "ok": ok,
        "errors": err,
        "error_kinds": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "elapsed_s": round(elapsed, 3),
        "conns_per_s": round(ok / elapsed, 1) if elapsed > 0 else 0,
        "names_used": names_used,
        "concurrency": args.concurrency,
        # from the TCP connect (and CONNECT) until the TLS handshake is complete, per connection
        "hs_p50_ms": ms(_pct(hs, 50)),
        "hs_p99_ms": ms(_pct(hs, 99)),
        "hs_mean_ms": ms(statistics.fmean(hs)) if hs else None,
    }


def cmd_tls_conns(args):
    if args.concurrency == 1:
        print(json.dumps(_tls_sync_main(args)))
    else:
        print(json.dumps(asyncio.run(_tls_main(args))))


# ---------------------------------------------------------------- idle keep-alive connections

async def _idle_main(args):
    ph, pp = args.proxy.rsplit(":", 1)
    req = (
        f"GET http://{args.host}:{args.port}{args.path} HTTP/1.1\r\n"
        f"Host: {args.host}:{args.port}\r\nUser-Agent: bench-idle\r\n\r\n"
    ).encode()
    sem = asyncio.Semaphore(args.parallel)
    conns = []
    stats = {"ok": 0, "err": 0}
    errors = {}

    async def open_one():
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(ph, int(pp)), 30)
                w.write(req)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if m:
                    await asyncio.wait_for(r.readexactly(int(m.group(1))), 30)
                if re.search(rb"(?i)\r\nconnection:\s*close", head):
                    raise RuntimeError("server said Connection: close")
                conns.append((r, w))
                stats["ok"] += 1
            except Exception as e:  # noqa: BLE001
                stats["err"] += 1
                k = f"{type(e).__name__}: {e}"[:120]
                errors[k] = errors.get(k, 0) + 1

    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(args.n)))
    open_s = time.monotonic() - t0
    with open(args.ready_file, "w") as f:
        json.dump({"ok": stats["ok"], "errors": stats["err"]}, f)
    # Hold until bench/run has measured, then check how many are still open.
    while not os.path.exists(args.stop_file):
        await asyncio.sleep(0.1)
    closed_early = sum(1 for r, _ in conns if r.at_eof())
    for _, w in conns:
        w.close()
    return {
        "ok": stats["ok"],
        "errors": stats["err"],
        "error_kinds": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "open_s": round(open_s, 2),
        "closed_by_proxy_while_held": closed_early,
    }


def cmd_idle_conns(args):
    print(json.dumps(asyncio.run(_idle_main(args))))


# ---------------------------------------------------------------- authenticated connections

class _Gss:
    """The least of MIT krb5's GSS-API C interface (libgssapi_krb5.so.2, through ctypes) to make
    SPNEGO initiator tokens for `HTTP@<host>` from the credential cache (KRB5CCNAME)."""

    def __init__(self, host):
        import ctypes as C
        self.C = C
        self.lib = C.CDLL("libgssapi_krb5.so.2")

        class Oid(C.Structure):
            _fields_ = [("length", C.c_uint32), ("elements", C.c_void_p)]

        class Buf(C.Structure):
            _fields_ = [("length", C.c_size_t), ("value", C.c_void_p)]

        self.Buf = Buf
        self._spnego_bytes = C.create_string_buffer(b"\x2b\x06\x01\x05\x05\x02", 6)  # 1.3.6.1.5.5.2
        self.spnego = Oid(6, C.cast(self._spnego_bytes, C.c_void_p))
        hbs = C.POINTER(Oid).in_dll(self.lib, "GSS_C_NT_HOSTBASED_SERVICE")
        svc = f"HTTP@{host}".encode()
        self._svc = C.create_string_buffer(svc, len(svc))
        nb = Buf(len(svc), C.cast(self._svc, C.c_void_p))
        self.name = C.c_void_p()
        minor = C.c_uint32()
        self.lib.gss_init_sec_context.restype = C.c_uint32
        self.lib.gss_import_name.restype = C.c_uint32
        major = self.lib.gss_import_name(C.byref(minor), C.byref(nb), hbs, C.byref(self.name))
        if major:
            raise RuntimeError(f"gss_import_name failed: major {major:#x} minor {minor.value}")

    def token(self):
        """One initiator token (a new context each time: the acceptor's replay cache refuses a
        token seen before)."""
        C = self.C
        minor = C.c_uint32()
        ctx = C.c_void_p()
        out = self.Buf()
        flags = C.c_uint32()
        major = self.lib.gss_init_sec_context(
            C.byref(minor), None, C.byref(ctx), self.name, C.byref(self.spnego),
            C.c_uint32(2 | 4),  # GSS_C_MUTUAL_FLAG | GSS_C_REPLAY_FLAG, as curl asks
            C.c_uint32(0), None, None, None, C.byref(out), C.byref(flags), None)
        try:
            if major not in (0, 1):  # GSS_S_COMPLETE, GSS_S_CONTINUE_NEEDED
                raise RuntimeError(f"gss_init_sec_context failed: major {major:#x} minor {minor.value}")
            import base64
            return base64.b64encode(C.string_at(out.value, out.length)).decode()
        finally:
            self.lib.gss_release_buffer(C.byref(C.c_uint32()), C.byref(out))
            self.lib.gss_delete_sec_context(C.byref(C.c_uint32()), C.byref(ctx), None)


def _read_response(sock, buf):
    """Reads one response (Content-Length bodies only) from `sock`; returns (status, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the response head")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed inside the body")
        buf += chunk
    return status, buf[n:]


def cmd_auth_conns(args):
    import base64
    ph, pp = args.proxy.rsplit(":", 1)
    gss = _Gss(args.gss_host) if args.scheme == "negotiate" else None
    basic = base64.b64encode(args.user.encode()).decode() if args.scheme == "basic" else ""
    codes = {}
    errors = {}
    ok = conns = 0
    t0 = time.monotonic()
    for k in range(args.conns):
        try:
            sock = socket.create_connection((ph, int(pp)), timeout=30)
        except OSError as e:
            key = f"connect: {e}"[:120]
            errors[key] = errors.get(key, 0) + 1
            continue
        conns += 1
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            for i in range(args.requests):
                auth = ""
                if basic:
                    auth = f"Proxy-Authorization: Basic {basic}\r\n"
                elif gss and i == 0:
                    auth = f"Proxy-Authorization: Negotiate {gss.token()}\r\n"
                sock.sendall(
                    f"GET http://{args.host}:{args.port}{args.path}?c={k}&r={i} HTTP/1.1\r\n"
                    f"Host: {args.host}:{args.port}\r\n{auth}\r\n".encode())
                status, buf = _read_response(sock, buf)
                codes[status] = codes.get(status, 0) + 1
                if status == "200":
                    ok += 1
        except Exception as e:  # noqa: BLE001 - counted and reported
            key = f"{type(e).__name__}: {e}"[:120]
            errors[key] = errors.get(key, 0) + 1
        finally:
            sock.close()
    elapsed = time.monotonic() - t0
    print(json.dumps({
        "requests": ok,
        "connections": conns,
        "non200": sum(codes.values()) - ok,
        "status_counts": codes,
        "errors": sum(errors.values()),
        "error_kinds": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "elapsed_s": round(elapsed, 3),
        "rps": round(ok / elapsed, 1) if elapsed > 0 else None,
    }))


# ---------------------------------------------------------------- RSS while streaming

def cmd_stream_rss(args):
    before = rss_kib(args.pid)
    samples = [before]
    t0 = time.monotonic()
    if args.out:
        # the whole output to a file (wrk's report is parsed from it), stderr with it
        with open(args.out, "wb") as f:
            proc = subprocess.Popen(args.command, stdout=f, stderr=subprocess.STDOUT)
    else:
        proc = subprocess.Popen(args.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while proc.poll() is None:
        try:
            samples.append(rss_kib(args.pid))
        except OSError:
            break
        time.sleep(args.interval)
    out, err = proc.communicate()
    elapsed = time.monotonic() - t0
    try:
        after = rss_kib(args.pid)
    except OSError:
        after = 0
    peak = max(samples)
    print(json.dumps({
        "rss_before_kib": before,
        "rss_max_kib": peak,
        "rss_after_kib": after,
        "growth_kib": peak - before,
        "rss_before_mib": round(before / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_growth_mib": round((peak - before) / 1024, 1),
        "samples": len(samples),
        "elapsed_s": round(elapsed, 2),
        "cmd_rc": proc.returncode,
        "cmd_out": (out or b"").decode(errors="replace").strip()[-200:],
        "cmd_err": (err or b"").decode(errors="replace").strip()[-200:],
    }))


# ---------------------------------------------------------------- other load on the machine

def _proc_table():
    """{pid: (ppid, comm, utime+stime ticks)} of every process."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        rest = s[s.rindex(")") + 2:].split()
        table[int(d)] = (int(rest[1]), comm, int(rest[11]) + int(rest[12]))
    return table


def cmd_watch_foreign(args):
    """Until killed: every --interval seconds, append one JSON line naming the processes outside
    the bench's process tree (not descendants of --root; not init, not kernel threads) that used
    more than --threshold of a core since the last sample."""
    clk = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    prev = _proc_table()
    while True:
        time.sleep(args.interval)
        cur = _proc_table()
        used = {}
        for pid, (ppid, comm, ticks) in cur.items():
            # skip ourselves, init (the VM's agent) and kernel threads
            if pid in (me, 1, 2) or ppid == 2 or pid not in prev:
                continue
            anc, ours = pid, False
            for _ in range(64):  # walk up to init
                if anc == args.root:
                    ours = True
                    break
                anc = cur.get(anc, (0,))[0]
                if anc <= 1:
                    break
            if ours:
                continue
            cpu = (ticks - prev[pid][2]) / clk / args.interval
            if cpu >= args.threshold:
                used[comm] = round(used.get(comm, 0) + cpu, 2)
        if used:
            with open(args.out, "a") as f:
                f.write(json.dumps({"t": time.strftime("%H:%M:%S", time.gmtime()),
                                    "interval_s": args.interval, "cores": used}) + "\n")
        prev = cur


def cmd_foreign_summary(args):
    """One line for the report from watch-foreign's file, or nothing (under 1 CPU-second)."""
    try:
        samples = [json.loads(l) for l in open(args.file) if l.strip()]
    except OSError:
        return
    total = {}
    for smp in samples:
        for comm, cores in smp["cores"].items():
            total[comm] = total.get(comm, 0) + cores * smp["interval_s"]
    if sum(total.values()) < 1:  # under one CPU-second in all: not worth a note
        return
    top = ", ".join(f"{c} {v:.0f} s" for c, v in sorted(total.items(), key=lambda kv: -kv[1])[:6])
    print(f"processes outside the bench used CPU during the measurements ({top} of CPU time; "
          f"{len(samples)} samples between {samples[0]['t']} and {samples[-1]['t']} UTC, in "
          f"out/foreign-cpu.jsonl; test times in out/run-log.txt): figures from then are noisy.")


# ---------------------------------------------------------------- parsers

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else None


def cmd_parse_wrk(args):
    t = open(args.file).read()
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", t)
    r["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+\w+)", t)
        r[f"p{pct}_ms"] = _ms(m.group(1)) if m else None
    # Latency avg stdev max +/- stdev
    m = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+\w+)", t)
    r["max_ms"] = _ms(m.group(1)) if m else None
    # Transfer/sec in wrk's binary units (KB = 1024 B), as MB/s of 10^6 bytes
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", t)
    r["mb_per_s"] = (round(float(m.group(1)) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[m.group(2)] / 1e6, 1)
                     if m else None)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    r["socket_errors"] = sum(map(int, m.groups())) if m else 0
    r["socket_errors_detail"] = m.group(0) if m else ""
    print(json.dumps(r))


def cmd_parse_hey(args):
    t = open(args.file).read()
    r = {}
    m = re.search(r"Total:\s+([\d.]+) secs", t)
    total = float(m.group(1)) if m else None
    codes = {k: int(v) for k, v in re.findall(r"\[(\d+)\]\s+(\d+) responses", t)}
    r["status_counts"] = codes
    r["requests"] = codes.get("200", 0)
    r["non200"] = sum(v for k, v in codes.items() if k != "200")
    r["rps"] = round(r["requests"] / total, 1) if total else None
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}% in ([\d.]+) secs", t)
        r[f"p{pct}_ms"] = float(m.group(1)) * 1e3 if m else None
    m = re.search(r"Slowest:\s+([\d.]+) secs", t)
    r["max_ms"] = round(float(m.group(1)) * 1e3, 1) if m else None
    m = re.search(r"Error distribution:\n((?:\s+\[\d+\].*\n?)+)", t)
    errs = re.findall(r"\[(\d+)\]\s+(.*)", m.group(1)) if m else []
    r["errors"] = sum(int(n) for n, _ in errs)
    r["error_kinds"] = [f"{n}× {e[:100]}" for n, e in errs[:3]]
    print(json.dumps(r))


def cmd_parse_curl(args):
    # curl -w '%{http_code} %{size_download} %{speed_download} %{time_total}'
    t = open(args.file).read().split()
    code, size, speed, total = t[0], int(float(t[1])), float(t[2]), float(t[3])
    print(json.dumps({"http_code": code, "bytes": size, "mb_per_s": round(speed / 1e6, 1),
                      "time_s": total}))


# ---------------------------------------------------------------- report

def _load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def _median(rows, test, contender, key):
    vals = [r[key] for r in rows
            if r.get("test") == test and r.get("contender") == contender and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _vals(rows, test, contender, key):
    return [r[key] for r in rows
            if r.get("test") == test and r.get("contender") == contender and r.get(key) is not None]


def _fmt(v, digits=None):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if digits is None:
        digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
    return f"{v:,.{digits}f}"


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def _derive(rows):
    """Rows computed from two measurements of the same round (appended to `rows`):
    auth-basic-ratio  Portcullis with Basic ÷ without auth, CPU per plain keep-alive request
                      (per interleaved pair of test 6a, or per round of test 1);
    auth-neg-extra    CPU per new connection with Negotiate − without auth."""
    def get(test, c, rnd, key):
        for r in rows:
            if r.get("test") == test and r.get("contender") == c and r.get("round") == rnd:
                return r.get(key)
        return None

    rounds = sorted({r.get("round") for r in rows if r.get("round") is not None})
    derived = []
    # The interleaved pairs of test 6a when they ran (one ratio per pair; the report takes the
    # median over all pairs), else test 1's one pair per round.
    pair_test = ("auth-pair" if any(r.get("test") == "auth-pair" for r in rows)
                 else "http-keepalive")
    for rnd in rounds:
        b = get(pair_test, "portcullis-basic", rnd, "cpu_us_per_req")
        n = get(pair_test, "portcullis", rnd, "cpu_us_per_req")
        if b is not None and n:
            derived.append({"test": "auth-basic-ratio", "contender": "portcullis", "round": rnd,
                            "cpu_ratio": round(b / n, 3), "basic_us": b, "noauth_us": n})
        neg = get("auth-newconn", "portcullis-negotiate", rnd, "cpu_us_per_req")
        none = get("auth-newconn", "portcullis", rnd, "cpu_us_per_req")
        if neg is not None and none is not None:
            derived.append({"test": "auth-neg-extra", "contender": "portcullis-negotiate",
                            "round": rnd, "neg_extra_us": round(neg - none, 1)})
    rows.extend(derived)


def cmd_report(args):
    rows = _load(args.results)
    _derive(rows)
    meta = json.load(open(args.meta))
    peer_ran = meta.get("hudsucker_ran", False)
    quick = meta.get("quick", False)
    out = []
    w = out.append

    # metric rows: (label, test, key, unit, direct contender, squid contender, target text, check,
    # digits, peer_na). check: function(portcullis, direct, squid) -> True/False/None.
    # peer_na: why hudsucker has no figure for a row it could not run (shown in its column).
    def ge_squid(k):
        return lambda p, d, s: None if not p or not s else p >= k * s

    def le_abs(k):
        return lambda p, d, s: None if p is None else p <= k

    def ge_direct(k):
        return lambda p, d, s: None if not p or not d else p >= k * d

    M = []

    # pc: the contender shown in the Portcullis column (the [auth] instance for the auth rows);
    # na: text for the direct/squid/hudsucker columns of a row that has no such figure.
    def metric(label, test, key, unit, squid, target="", check=None, digits=None, direct="direct",
               peer_na="", pc="portcullis", na=""):
        M.append((label, test, key, unit, direct, squid, target, check, digits, peer_na, pc, na))

    def connect_check(p, d, s):
        if not p or not d or not s:
            return None
        return p >= 0.95 * d and p >= s

    AUTH_NA = "n/a³"

    metric("1. plain HTTP keep-alive, 50 conns, 100 B: throughput", "http-keepalive", "rps", "req/s",
           "squid", "≥ 3× Squid", ge_squid(3))
    metric("1. plain HTTP keep-alive: p50 latency", "http-keepalive", "p50_ms", "ms", "squid",
           digits=3)
    metric("1. plain HTTP keep-alive: p99 latency", "http-keepalive", "p99_ms", "ms", "squid",
           digits=3)
    metric("1. plain HTTP keep-alive: proxy CPU per request", "http-keepalive", "cpu_us_per_req",
           "µs", "squid", "≤ 20 µs", le_abs(20), direct=None)
    metric("1. plain HTTP keep-alive, 50 conns, 1 MiB responses: throughput", "http-1m",
           "mb_per_s", "MB/s", "squid", "≥ 4× Squid", ge_squid(4))
    metric("1. 1 MiB responses: requests/s", "http-1m", "rps", "req/s", "squid")
    metric("1. 1 MiB responses: proxy CPU per request", "http-1m", "cpu_us_per_req", "µs", "squid",
           direct=None)
    metric("1. 1 MiB responses: proxy RSS before the load⁴", "http-1m", "rss_before_mib", "MiB",
           "squid", direct=None, digits=1)
    metric("1. 1 MiB responses: proxy peak RSS during the load (VmRSS every 50 ms)⁴", "http-1m",
           "rss_peak_mib", "MiB", "squid", "≤ 20 MiB", le_abs(20), direct=None, digits=1)
    metric("1. 1 MiB responses: RSS added by the load (peak − before)", "http-1m",
           "rss_growth_mib", "MiB", "squid", direct=None, digits=1)
    metric("2. new client connection per request, 50 conns: throughput", "http-newconn", "rps",
           "req/s", "squid", "≥ 1.4× Squid", ge_squid(1.4))
    metric("2. new connection per request: proxy CPU per request", "http-newconn",
           "cpu_us_per_req", "µs", "squid", direct=None)
    metric("3. CONNECT tunnel, 100 MiB over HTTPS (curl -p)", "connect-100m", "mb_per_s", "MB/s",
           "squid", "≥ 0.95× direct and ≥ Squid", connect_check, peer_na="n/a¹")
    metric("3. CONNECT tunnel: proxy CPU per MiB", "connect-100m", "cpu_ms_per_mib", "ms",
           "squid", direct=None, digits=2, peer_na="n/a¹")
    metric("3. CONNECT tunnel: origin (nginx, same core) CPU per MiB⁵", "connect-100m",
           "origin_cpu_ms_per_mib", "ms", "squid", digits=2, peer_na="n/a¹")
    metric("3. CONNECT tunnel, 100 MiB, plain HTTP inside (curl -p http://)", "connect-100m-plain",
           "mb_per_s", "MB/s", "squid", "≥ 0.95× direct", ge_direct(0.95), peer_na="n/a¹")
    metric("3. CONNECT tunnel, plain HTTP inside: proxy CPU per MiB", "connect-100m-plain",
           "cpu_ms_per_mib", "ms", "squid", direct=None, digits=2, peer_na="n/a¹")
    metric("3. CONNECT tunnel, plain HTTP inside: origin CPU per MiB⁵", "connect-100m-plain",
           "origin_cpu_ms_per_mib", "ms", "squid", digits=2, peer_na="n/a¹")
    metric("4. intercepted HTTPS keep-alive, 50 conns, 100 B (hey): throughput", "https-keepalive",
           "rps", "req/s", "squid-bump", "≥ 1.6× Squid ssl_bump", ge_squid(1.6))
    metric("4. intercepted HTTPS keep-alive: p99 latency", "https-keepalive", "p99_ms", "ms",
           "squid-bump", digits=2)
    metric("4. intercepted HTTPS keep-alive: proxy CPU per request", "https-keepalive",
           "cpu_us_per_req", "µs", "squid-bump", "≤ 27 µs", le_abs(27), direct=None)
    metric("4. intercepted HTTPS, new connection + TLS handshake per request, 50 conns "
           "(hey -disable-keepalive): throughput", "https-newconn", "rps", "req/s", "squid-bump",
           "≥ Squid ssl_bump", ge_squid(1))
    metric("4. intercepted HTTPS, new connection per request: p99 latency", "https-newconn",
           "p99_ms", "ms", "squid-bump", digits=2)
    metric("4. intercepted HTTPS, new connection per request: proxy CPU per request",
           "https-newconn", "cpu_us_per_req", "µs", "squid-bump", direct=None)
    metric("4. intercepted HTTPS download, 100 MiB (curl)", "https-100m", "mb_per_s", "MB/s",
           "squid-bump", "≥ 0.85× direct", ge_direct(0.85))
    metric("4. intercepted 100 MiB download: proxy CPU per MiB", "https-100m", "cpu_ms_per_mib",
           "ms", "squid-bump", direct=None, digits=2)
    metric("4. new TLS connections/s, many distinct names (cold mint), 32 concurrent", "tls-cold",
           "conns_per_s", "conn/s", "squid-bump")
    metric("4. cold mint: proxy CPU per connection", "tls-cold", "cpu_us_per_conn", "µs",
           "squid-bump", direct=None)
    metric("4. cold mint, 32 concurrent: connect + CONNECT + TLS handshake p50 (includes queueing)",
           "tls-cold", "hs_p50_ms", "ms", "squid-bump", digits=2)
    metric("4. cold mint + handshake, one connection at a time: p50", "tls-cold-lat", "hs_p50_ms",
           "ms", "squid-bump", "≤ 2 ms", le_abs(2), digits=2)
    metric("4. cold mint + handshake, one connection at a time: p99", "tls-cold-lat", "hs_p99_ms",
           "ms", "squid-bump", digits=2)
    metric("4. new TLS connections/s, one name (cached cert), 32 concurrent", "tls-cached",
           "conns_per_s", "conn/s", "squid-bump")
    metric("4. cached cert: proxy CPU per connection", "tls-cached", "cpu_us_per_conn", "µs",
           "squid-bump", direct=None)
    metric("4. cached cert, 32 concurrent: connect + CONNECT + TLS handshake p50", "tls-cached",
           "hs_p50_ms", "ms", "squid-bump", digits=2)
    metric("5. RSS idle (fresh start, no traffic)", "mem-idle", "rss_mib", "MiB", "squid", "≤ 15 MiB",
           le_abs(15), direct=None, digits=1)
    metric("5. RSS idle, benchmark instance (with the 50,000-name hosts file), before traffic",
           "mem-idle-hosts", "rss_mib", "MiB", "squid", direct=None, digits=1, peer_na="n/a²")
    metric("5. RSS after all tests (10,000 idle connections opened and closed)", "mem-after",
           "rss_mib", "MiB", "squid", direct=None, digits=1)
    metric(f"5. RSS per idle keep-alive connection ({meta.get('idle_n')} conns)", "mem-idleconns",
           "per_conn_kib", "KiB", "squid", "≤ 32 KiB", le_abs(32), direct=None, digits=1)
    metric("5. 1 GiB plain-HTTP download through the proxy (curl): throughput", "mem-stream",
           "mb_per_s", "MB/s", "squid")
    metric("5. 1 GiB download: proxy CPU per MiB", "mem-stream", "cpu_ms_per_mib", "ms", "squid",
           direct=None, digits=2)
    metric("5. RSS growth while streaming 1 GiB (plain HTTP)", "mem-stream", "growth_mib", "MiB",
           "squid", "flat", lambda p, d, s: None if p is None else p <= 8, direct=None, digits=1)
    metric("6. Basic auth, plain keep-alive, 50 conns, 100 B (wrk): throughput", "http-keepalive",
           "rps", "req/s", "squid", pc="portcullis-basic", na=AUTH_NA)
    metric("6. Basic auth, plain keep-alive: proxy CPU per request", "http-keepalive",
           "cpu_us_per_req", "µs", "squid", direct=None, pc="portcullis-basic", na=AUTH_NA)
    metric("6. Basic auth: CPU per request ÷ Portcullis without auth (median of interleaved "
           f"{meta.get('auth_pair_dur', '')}s wrk pairs, no auth then Basic)",
           "auth-basic-ratio", "cpu_ratio", "×", "squid", "≤ 1.05×", le_abs(1.05), direct=None,
           digits=2, na=AUTH_NA)
    schemes = (("portcullis", "no auth"), ("portcullis-basic", "Basic"),
               ("portcullis-negotiate", "Negotiate"))
    for c, name in schemes:
        metric(f"6. new connection per request ({meta.get('auth_newconn')} connections, one "
               f"request each): proxy CPU per connection — {name}", "auth-newconn",
               "cpu_us_per_req", "µs", "squid", direct=None, pc=c, na=AUTH_NA)
    for c, name in schemes:
        metric(f"6. one connection, {meta.get('auth_reuse')} requests (Negotiate: token on the "
               f"first only): proxy CPU per request — {name}", "auth-reused", "cpu_us_per_req",
               "µs", "squid", direct=None, pc=c, na=AUTH_NA)
    metric("6. Negotiate: extra CPU per new authenticated connection (Negotiate − no auth, "
           "same round)", "auth-neg-extra", "neg_extra_us", "µs", "squid", direct=None,
           pc="portcullis-negotiate", na=AUTH_NA)
    for c, name in (schemes[0], schemes[2]):
        metric(f"6. curl (--proxy-negotiate sends a token on every request), one connection, "
               f"{meta.get('auth_curl')} requests: proxy CPU per request — {name}",
               "auth-curl-reused", "cpu_us_per_req", "µs", "squid", direct=None, pc=c,
               na=AUTH_NA)

    # Quick mode runs a subset: leave out the rows of tests it did not run.
    if quick:
        ran = {(r.get("test"), r.get("contender")) for r in rows}
        M = [m for m in M if (m[1], m[10]) in ran]

    w("# Portcullis benchmark results")
    w("")
    if quick:
        w(f"**Quick mode** (`bench/run --quick`) on {meta['date']} (total run time "
          f"{meta.get('elapsed', '?')}): {meta['rounds']} round(s) of short loads over the headline "
          "rows, for checking the harness and a first look — not figures to compare or quote; "
          "`bench/run` (the full run) regenerates `bench/RESULTS.md`.")
    else:
        w(f"Generated by `bench/run` on {meta['date']} (total run time {meta.get('elapsed', '?')}). "
          "Regenerate with `bench/run`; see `bench/README.md`.")
    w("")
    w(f"**Machine:** {meta['cpu']} — {meta['nproc']} cores, kernel {meta['kernel']}. "
      f"**Pinning (taskset):** proxies (Portcullis, both Squids and Squid's certificate helpers, "
      f"hudsucker) and the nginx origin on **core 1**; every load generator (wrk, hey, curl, the "
      f"Python client) on **core 0**. There is no third core, so the proxy and the origin share "
      f"core 1: proxied figures include the proxy taking CPU from the origin, while the direct "
      f"baseline gives the origin core 1 alone (and is itself bounded by one load-generator core).")
    w("")
    w(f"**Method:** contenders alternate (direct, Portcullis, Squid, hudsucker; then again) for "
      f"{meta['rounds']} rounds; each figure is the median of the rounds. Load runs last "
      f"{meta['duration']}; TLS connection runs {meta['tls_duration']}. Portcullis runs with its "
      f"access log (file) and metrics (admin listener) **on**; Squid with its access log on and "
      f"caching off (`cache deny all`, no cache_dir, `cache_mem 0`). CPU per request = (utime+stime "
      f"of the proxy process and its children from `/proc/<pid>/stat`, after − before) ÷ "
      f"successful requests, clock tick {meta['clk_tck']} Hz. MB/s = 10⁶ bytes per second.")
    w("")
    if peer_ran:
        w("**hudsucker** is the Rust peer: `bench/hudsucker-peer`, hudsucker's `noop` example (no "
          "handlers, no logging; release build) with rustls' `ring` provider like Portcullis, "
          "certificates minted from its own CA by `RcgenAuthority` (cache of 1,000), upstream TLS "
          "trusting only the origin CA and every name resolved to 127.0.0.1. It has no access log "
          "and no metrics.")
    else:
        w(f"**hudsucker** (the Rust peer) did not run: {meta.get('hudsucker_why', 'disabled')}.")
    w("")
    w("## Results")
    w("")
    w("Ratios are Portcullis ÷ the other figure (for rates higher is better; for latency, CPU and "
      "memory lower is better). Squid figures of the interception rows are from the ssl_bump "
      "instance.")
    w("")
    w("| Measurement | Unit | Direct | Portcullis | Squid | hudsucker | Portcullis ÷ direct | "
      "Portcullis ÷ Squid | Portcullis ÷ hudsucker | Target | Met |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    met_summary = []
    for label, test, key, unit, direct, squid, target, check, digits, peer_na, pc, na in M:
        p = _median(rows, test, pc, key)
        d = _median(rows, test, direct, key) if direct else None
        s = None if na else _median(rows, test, squid, key)
        h = None if na else _median(rows, test, "hudsucker", key)
        ok = check(p, d, s) if check else None
        mark = "—" if check is None else ("✅ yes" if ok else ("❌ no" if ok is False else "?"))
        sq_label = na or (_fmt(s, digits) + (" (ssl_bump)" if squid == "squid-bump" and s is not None else ""))
        h_label = na or (peer_na if (peer_na and h is None) else _fmt(h, digits))
        d_label = _fmt(d, digits) if direct else (na or "—")
        w(f"| {label} | {unit} | {d_label} | {_fmt(p, digits)} | {sq_label} | {h_label} | "
          f"{_ratio(p, d) if direct else '—'} | {_ratio(p, s)} | {_ratio(p, h)} | {target} | {mark} |")
        if check is not None:
            met_summary.append((label, target, ok, p, d, s, h, unit))
    w("")
    w("¹ hudsucker intercepts every CONNECT (it has no tunnel or pass-through mode), so it has no "
      "CONNECT-tunnel figure. ² hudsucker loads no hosts file (its resolver maps every name to "
      "127.0.0.1), so its idle figure above is already the benchmark instance. "
      "The one-at-a-time cold-mint rows run `bench.py tls-conns --concurrency 1` (blocking "
      "sockets, the handshake runs inside OpenSSL) over "
      + (f"up to 500 fresh names per round (at most {meta.get('lat_dur', '?')})" if quick
         else "500 fresh names per round")
      + " and report the "
      "time from the start of the TCP connect to the completed TLS handshake: connect + CONNECT + "
      "minting + handshake through the proxy, plus whatever upstream work the proxy does before "
      "it finishes the client's handshake; in the direct column connect + handshake with nginx, "
      "the floor on this machine. The 32-concurrent rows report the same time under load, mostly queueing. "
      "1 MiB rows: MB/s from wrk's Transfer/sec. "
      + ("" if not any(m[11] == AUTH_NA for m in M) else
      "³ The authentication rows measure Portcullis only: a second instance, the benchmark "
      "configuration plus `[auth]` (Basic from an htpasswd file with a bcrypt hash; Negotiate with "
      "a keytab for `HTTP/localhost` and a KDC on loopback), compared with the instance without "
      "authentication in the same round. The connection rows run `bench.py auth-conns`, one "
      "request after another: new connections with one request each, then one connection "
      "carrying them all; its Negotiate token (SPNEGO, from libgssapi_krb5) is on the first "
      "request of each connection only, as browsers send it; Basic is on every request. "
      "The curl rows: `curl --proxy-negotiate` with many URLs on one command line (one "
      "connection) sends a new token with every request. ")
      + "⁴ The benchmark instances load the ~50,000-name hosts file of the cold-mint test, which is "
      "part of every RSS figure here (see the idle rows of section 5); \"before\" is just before "
      "each round's load, so from round 2 it includes what earlier loads left allocated. "
      "⁵ nginx runs on the proxies' core, and a loopback send runs the receiver's TCP input in the "
      "sender's time: direct, nginx's sends to curl carry that work; through a proxy, the proxy's "
      "sends do, and nginx's CPU per MiB drops by about what the proxy uses. Origin + proxy is the "
      "server core's load per MiB; the CONNECT rows take the median of "
      "TUNNEL_REPS interleaved transfers per round (see bench/README.md). "
      "A — in the Direct column of a CPU or RSS row: there is no proxy process.")
    w("")

    # per-round raw figures
    w("<details><summary>Per-round figures</summary>")
    w("")
    w("| Test | Contender | Figure | Rounds |")
    w("|---|---|---|---|")
    seen = set()
    for label, test, key, unit, direct, squid, target, check, digits, peer_na, pc, na in M:
        for c in ("direct", "portcullis", "portcullis-basic", "portcullis-negotiate", "squid",
                  "squid-bump", "hudsucker"):
            if (test, c, key) in seen:
                continue
            seen.add((test, c, key))
            vals = _vals(rows, test, c, key)
            if vals:
                w(f"| {test} | {c} | {key} | {', '.join(_fmt(v, digits) for v in vals)} |")
    w("")
    w("</details>")
    w("")

    # errors seen in the load runs
    w("## Errors and anomalies seen during the run")
    w("")
    anomalies = []
    for r in rows:
        bad = []
        for k in ("non2xx", "socket_errors", "errors", "non200", "missing", "closed_by_proxy_while_held"):
            if r.get(k):
                bad.append(f"{k}={r[k]}")
        if r.get("http_code") and r["http_code"] != "200":
            bad.append(f"http_code={r['http_code']}")
        if (r.get("max_ms") or 0) >= 1000:
            # Seen on the shared machine (other loads running): a run's first batch of requests
            # stalled for 1.6-2 s (no SYN retransmission counted), and a short run's figure is
            # then mostly that stall.
            bad.append(f"slowest request {r['max_ms']:,.0f} ms (a stall of ≥ 1 s: the figure "
                       f"of this run is suspect)")
        if bad:
            extra = r.get("error_kinds") or r.get("socket_errors_detail") or ""
            anomalies.append(f"- `{r['test']}` {r['contender']} round {r.get('round')}: "
                             f"{', '.join(bad)} {json.dumps(extra, ensure_ascii=False) if extra else ''}")
    for line in meta.get("notes", []):
        anomalies.append(f"- {line}")
    w("\n".join(anomalies) if anomalies else "None: every request in every run got a 200.")
    w("")

    w("## Versions")
    w("")
    for k, v in meta["versions"].items():
        w(f"- **{k}**: {v}")
    w("")
    w("## Exact commands")
    w("")
    w("`$P` = Portcullis' port, `$S` = Squid (forward), `$SB` = Squid (ssl_bump), `$H` = hudsucker, "
      "`$O` = nginx HTTP, `$OS` = nginx HTTPS; `bench.py` is `bench/bench.py`. Configs are written "
      "by `bench/run` (functions `write_nginx_conf`, `write_portcullis_conf`, `write_squid_conf`); "
      "hudsucker takes its settings on the command line (below).")
    w("")
    w("```sh")
    for c in meta["commands"]:
        w(c)
    w("```")
    w("")
    print("\n".join(out))
    print(json.dumps([[l, t, ok, p, d, s, h, u] for l, t, ok, p, d, s, h, u in met_summary]),
          file=sys.stderr)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("tls-conns")
    p.add_argument("--proxy", default="")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/small")
    p.add_argument("--cafile", required=True)
    p.add_argument("--prefix", default="n")
    p.add_argument("--start", type=int, default=0, help="first name index (names start..count-1)")
    p.add_argument("--count", type=int, default=10000, help="end of the name index range")
    p.add_argument("--single-name", default="")
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--concurrency", type=int, default=32)
    p.set_defaults(fn=cmd_tls_conns)

    p = sub.add_parser("idle-conns")
    p.add_argument("--proxy", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/small")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--parallel", type=int, default=200)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--stop-file", required=True)
    p.set_defaults(fn=cmd_idle_conns)

    p = sub.add_parser("auth-conns")
    p.add_argument("--proxy", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/small")
    p.add_argument("--scheme", choices=("none", "basic", "negotiate"), default="none")
    p.add_argument("--user", default="", help="user:password (Basic)")
    p.add_argument("--gss-host", default="localhost", help="Negotiate: the token is for HTTP@this")
    p.add_argument("--conns", type=int, required=True)
    p.add_argument("--requests", type=int, default=1, help="requests per connection")
    p.set_defaults(fn=cmd_auth_conns)

    p = sub.add_parser("watch-foreign")
    p.add_argument("--root", type=int, required=True, help="pid of the bench (its tree is ours)")
    p.add_argument("--out", required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--threshold", type=float, default=0.1, help="share of a core")
    p.set_defaults(fn=cmd_watch_foreign)

    p = sub.add_parser("foreign-summary")
    p.add_argument("file")
    p.set_defaults(fn=cmd_foreign_summary)

    p = sub.add_parser("stream-rss")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--out", default="", help="write the command's stdout and stderr to this file")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_stream_rss)

    p = sub.add_parser("cpu-ticks")
    p.add_argument("pid", type=int)
    p.set_defaults(fn=lambda a: print(cpu_ticks(a.pid)))

    p = sub.add_parser("rss-kib")
    p.add_argument("pid", type=int)
    p.set_defaults(fn=lambda a: print(rss_kib(a.pid)))

    for name, fn in (("parse-wrk", cmd_parse_wrk), ("parse-hey", cmd_parse_hey),
                     ("parse-curl", cmd_parse_curl)):
        p = sub.add_parser(name)
        p.add_argument("file")
        p.set_defaults(fn=fn)

    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--meta", required=True)
    p.set_defaults(fn=cmd_report)

    args = ap.parse_args()
    if args.cmd == "stream-rss" and args.command and args.command[0] == "--":
        args.command = args.command[1:]
    args.fn(args)


if __name__ == "__main__":
    main()
