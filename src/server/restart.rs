//! Settings read once at start: a reload that changes one of them is applied
//! for everything else, and says which of them wait for the next restart.

use crate::config::{Config, Secret};

/// The settings that differ between `started` (the config this process
/// started with, whose values it still runs on) and `next`, and that only a
/// restart applies. Compared with what runs, not with the previous reload: a
/// value changed and changed back is no longer pending.
pub(super) fn pending(started: &Config, next: &Config) -> Vec<&'static str> {
    let (a, b) = (started, next);
    [
        ("[server] listen", a.server.listen != b.server.listen),
        (
            "[server] idle_timeout",
            a.server.idle_timeout != b.server.idle_timeout,
        ),
        (
            "[server] body_memory",
            a.server.body_memory != b.server.body_memory,
        ),
        (
            "[server] shutdown_grace",
            a.server.shutdown_grace != b.server.shutdown_grace,
        ),
        ("[admin] listen", a.admin.listen != b.admin.listen),
        ("[store] url", a.store.url != b.store.url),
        (
            "[store] password",
            a.store.password.as_ref().map(Secret::expose) != b.store.password.as_ref().map(Secret::expose),
        ),
        ("[store] pool_size", a.store.pool_size != b.store.pool_size),
        (
            "[store] statement_timeout",
            a.store.statement_timeout != b.store.statement_timeout,
        ),
        ("[store] tls", a.store.tls != b.store.tls),
        (
            "[dispatch] concurrency",
            a.dispatch.concurrency != b.dispatch.concurrency,
        ),
        ("[telemetry]", a.telemetry != b.telemetry),
    ]
    .into_iter()
    .filter_map(|(setting, changed)| changed.then_some(setting))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadMode;

    fn config(extra: &str) -> Config {
        let text = format!("[sources.github]\ntype = \"github\"\nsecrets = [\"s\"]\n{extra}");
        crate::config::parse(std::path::Path::new("t.toml"), &text, LoadMode::Check)
            .map(|l| l.config)
            .unwrap_or_else(|r| panic!("{}", r.diagnostics.len()))
    }

    #[test]
    fn pending_settings_are_those_that_differ_from_what_runs() {
        let started = config("[store]\nurl = \"postgres://hb@db/hb\"\npool_size = 10\n");
        assert!(pending(&started, &started).is_empty());
        let next = config(
            "[server]\nidle_timeout = \"5s\"\nshutdown_grace = \"1m\"\n[store]\nurl = \"postgres://hb@db/hb\"\npool_size = 20\nstatement_timeout = \"1s\"\npassword = \"pw\"\n",
        );
        assert_eq!(
            pending(&started, &next),
            [
                "[server] idle_timeout",
                "[server] shutdown_grace",
                "[store] password",
                "[store] pool_size",
                "[store] statement_timeout",
            ]
        );
        // Changed and changed back: nothing waits for a restart any more.
        assert!(
            pending(
                &started,
                &config("[store]\nurl = \"postgres://hb@db/hb\"\npool_size = 10\n")
            )
            .is_empty()
        );
    }
}
