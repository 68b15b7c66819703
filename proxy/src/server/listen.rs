//! The kernel's side of listening: the accept queue's length and the process's descriptor
//! limit, the two things that decide whether a reconnect storm after a network blip is
//! answered or dropped.

use std::net::SocketAddr;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::TcpListener;

/// Binds `addr` with a listen queue of `backlog` (tokio's `TcpListener::bind` uses 128, which
/// a burst of reconnecting clients overflows), warning when the kernel caps it lower.
/// `v6_only` lets an IPv6 listener share its port with an IPv4 one (the transparent
/// listeners, where each family reads its own original-destination option).
pub(super) fn bind(addr: SocketAddr, backlog: u32, v6_only: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        let socket = tokio::net::TcpSocket::new_v6()?;
        if v6_only {
            setsockopt(&socket, sockopt::Ipv6V6Only, &true)?;
        }
        socket
    };
    // As `TcpListener::bind`: a restarted proxy can bind again while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    if let Some(cap) = somaxconn().filter(|&cap| cap < backlog) {
        tracing::warn!(
            %addr, backlog, somaxconn = cap,
            "the kernel caps server.listen_backlog at net.core.somaxconn; raise it with sysctl"
        );
    }
    socket.listen(backlog)
}

fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Descriptors per admitted client connection: its socket and the origin's. (Splice pipes
/// are pooled and held only while bytes move, see `tunnel::splice`.)
const FDS_PER_CONNECTION: u64 = 2;

/// Descriptors for everything else: listeners, files, the resolver, pooled pipes.
const FDS_RESERVE: u64 = 256;

/// Readies the process for `server.max_connections` connections' descriptors: raises the
/// soft limit to the hard one (as nginx's `worker_rlimit_nofile` and Squid's
/// `max_filedescriptors` do: a shell's default soft limit of 1024 would cap the proxy at a few
/// hundred tunnels while the administrator's `LimitNOFILE` allows far more), warns when even
/// the hard limit cannot hold them, and grows the descriptor table to that size now
/// ([`grow_fd_table`]).
pub(super) fn prepare_descriptors(max_connections: usize) {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        tracing::debug!(
            from = soft,
            to = hard,
            "raised the open-file limit to its hard limit"
        );
        hard
    } else {
        soft
    };
    let needed = (max_connections as u64)
        .saturating_mul(FDS_PER_CONNECTION)
        .saturating_add(FDS_RESERVE);
    if limit < needed {
        tracing::warn!(
            limit, needed, max_connections,
            "the open-file limit cannot hold server.max_connections (2 descriptors each); \
             raise LimitNOFILE (systemd) or the container's nofile limit, or lower server.max_connections"
        );
    }
    grow_fd_table(needed.min(limit));
}

/// Grows the kernel's descriptor table to hold `size` descriptors, by duplicating one to just
/// below that number and closing the copy (the table never shrinks).
///
/// Left to grow on demand, the table doubles from 64 entries as connections arrive, and in a
/// multi-threaded process every doubling waits for an RCU grace period (`expand_fdtable` in
/// the kernel's `fs/file.c` calls `synchronize_rcu()`), a few scheduler ticks in which the
/// thread opening the descriptor — the accept loop, or a CONNECT dialling its origin — stands
/// still. Eight doublings on the way to 10,000 connections stalled the first reconnect burst
/// after a start for ~150 ms, queueing thousands of clients behind them; done here, it is one
/// wait at start-up. Costs the kernel 8 bytes per slot (256 KiB for the default 10,000
/// connections), not the process.
fn grow_fd_table(size: u64) {
    use nix::fcntl::{fcntl, FcntlArg};
    let Ok(highest) = i32::try_from(size.saturating_sub(1)) else {
        return;
    };
    match fcntl(std::io::stderr(), FcntlArg::F_DUPFD_CLOEXEC(highest)) {
        Ok(copy) => {
            let _ = nix::unistd::close(copy);
            tracing::debug!(size, "descriptor table grown");
        }
        Err(e) => tracing::debug!(size, error = %e, "cannot grow the descriptor table ahead"),
    }
}
