//! hookbridge: verified VCS webhooks in, CircleCI and GitLab pipeline triggers out, durably.
//!
//! The flow of one webhook, and the module that owns each step:
//!
//! ```text
//! POST /hooks/{source} ─▶ source (verify, describe) ─▶ event::Event ─▶ rules (match, render)
//!     ─▶ store (one transaction: delivery + jobs) ─▶ 202 + summary
//! dispatch (lease, send through target, retry, dead-letter) ─▶ CI API
//! ```
//!
//! [`config`] turns the TOML file into validated, compiled types; [`intake`] is
//! the shared path from a raw request to a delivery ready to store, used by the
//! HTTP handler and by the offline tools alike; [`server`] owns the listeners.
//!
//! The modules depend on each other in one direction only (tests/architecture.rs
//! fails on an import cycle), each on those before it:
//!
//! ```text
//! event, config leaves (diagnostic, loader, retry, raw, secret, telemetry, units, limits),
//!     template, telemetry → source, target → rules → config → intake → store → dispatch
//!     → server → cli
//! ```
//!
//! `source`, `target` and `rules` compile their part of the config against the
//! leaves ([`config::loader::Loader`], [`config::retry::RetryPolicy`]); only
//! `config/mod.rs` (`Config`, `load`, `compile`) names them. Templates are a
//! leaf both `rules` and `target` render with. [`telemetry`] (logs, metrics,
//! the spans of a delivery's trace) names only `event` and the config leaf of
//! its settings, so every step can make its span. The admin API calls `intake`
//! and the store, never the CLI.

pub mod cli;
pub mod config;
pub mod dispatch;
pub mod event;
pub mod explain;
pub mod intake;
pub mod rules;
pub mod server;
pub mod source;
pub mod store;
pub mod target;
pub mod telemetry;
pub mod template;
pub mod vcs;
