//! `hookbridge healthcheck`: ask the running daemon's admin listener whether it
//! is alive (`/healthz`) or ready (`/readyz`); exit 0 when it answers 200.
//!
//! For container `HEALTHCHECK`s and exec probes in images without curl
//! (distroless). Plain HTTP/1.0 over a std socket: no runtime, no extra crates.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::ConfigArg;
use crate::config::{self, LoadMode};

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Check readiness (`/readyz`: the store can commit) instead of liveness (`/healthz`)
    #[arg(long)]
    pub ready: bool,
    /// Admin address to ask [default: `[admin] listen` from the config, 0.0.0.0 as loopback]
    #[arg(long, value_name = "HOST:PORT")]
    #[arg(value_parser = resolve)]
    pub addr: Option<SocketAddr>,
    /// Give up after this many seconds (1 to 3600)
    #[arg(long, value_name = "SECONDS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT))]
    pub timeout: u64,
}

/// The longest `--timeout` honoured (a probe that waits longer is a hung probe).
const MAX_TIMEOUT: u64 = 3600;

pub(crate) fn run(args: &HealthcheckArgs) -> ExitCode {
    let addr = match args.addr {
        Some(addr) => addr,
        None => match config::load(&args.config.path(), LoadMode::Check) {
            Ok(loaded) => loopback_for(loaded.config.admin.listen),
            Err(report) => {
                eprint!("{report}");
                return ExitCode::FAILURE;
            }
        },
    };
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let timeout = Duration::from_secs(args.timeout.clamp(1, MAX_TIMEOUT));
    match probe(addr, path, timeout) {
        Ok(200) => {
            println!("{path} on {addr}: 200");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("error: {path} on {addr} answered {status}");
            ExitCode::FAILURE
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            eprintln!(
                "error: {path} on {addr}: no answer within {} s",
                timeout.as_secs()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {path} on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A wildcard listen address is reached through the loopback of the same family.
/// `HOST:PORT` with a name (`localhost:9090`) or an address; a name is
/// looked up once, and its first IPv4 address taken (the admin listener's
/// default is 127.0.0.1), else its first.
fn resolve(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let found: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}` is not HOST:PORT: {e}"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("`{text}` names no address"))
}

fn loopback_for(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// `GET path` and the response's status code.
fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    status_code(&head[..len])
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}

/// The code of an `HTTP/1.x NNN ...` status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_line() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\ncontent-length: 3"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn wildcard_addresses_become_loopback() {
        let any: SocketAddr = "0.0.0.0:9090".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(loopback_for(any).to_string(), "127.0.0.1:9090");
        let any6: SocketAddr = "[::]:9090".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(loopback_for(any6).to_string(), "[::1]:9090");
        let own: SocketAddr = "10.0.0.1:9090".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(loopback_for(own), own);
    }
}
