//! Where a request to the admin listener comes from and is addressed to:
//! the checks the API and the dashboard share against DNS rebinding and
//! cross-site requests.

use axum::http::{HeaderMap, Uri, header};

/// The names a request is addressed to: its target's authority (HTTP/2's
/// `:authority`, an absolute-form target) and its one `Host`. `None` when
/// it names none, several `Host`s, or one that is not text.
pub(crate) fn addressed_to(uri: &Uri, headers: &HeaderMap) -> Option<Vec<String>> {
    let mut hosts: Vec<String> = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .into_iter()
        .collect();
    let mut given = headers.get_all(header::HOST).iter();
    match (given.next(), given.next()) {
        (Some(host), None) => hosts.push(host.to_str().ok()?.to_owned()),
        (Some(_), Some(_)) => return None,
        (None, _) => {}
    }
    (!hosts.is_empty()).then_some(hosts)
}

/// Whether a request is addressed only to loopback names (`hosts` from
/// [`addressed_to`]); `None`, no name or an unreadable one, is not.
pub(crate) fn all_loopback(hosts: Option<&[String]>) -> bool {
    hosts.is_some_and(|h| h.iter().all(|h| is_loopback_host(h)))
}

/// A `Host` (or an origin's host) that names this machine's loopback:
/// `localhost`, `127.0.0.0/8` or `[::1]`, with any port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(addr, _)| addr),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A browser's request from another site: `Sec-Fetch-Site: cross-site` or
/// `same-site`, or an `Origin` whose host and port are not a name the
/// request is addressed to (`hosts`). Several such headers, or one that is
/// not text, count as cross-site too. Clients that are not browsers send
/// neither header.
pub(crate) fn cross_site(headers: &HeaderMap, hosts: Option<&[String]>) -> bool {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
    };
    let fetch_site = values("sec-fetch-site");
    if fetch_site.iter().any(|s| {
        s.is_none_or(|s| s.eq_ignore_ascii_case("cross-site") || s.eq_ignore_ascii_case("same-site"))
    }) {
        return true;
    }
    match values("origin").as_slice() {
        [] => false,
        [Some(origin)] => {
            let host = origin.split_once("://").map(|(_, rest)| rest);
            host.is_none_or(|h| !hosts.unwrap_or_default().iter().any(|a| a == h))
        }
        _ => true,
    }
}
