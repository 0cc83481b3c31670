//! The largest value hookbridge accepts for each duration and size in the
//! config, and how deeply an `if` expression, a template or a glob may nest.
//!
//! Why bounds at all: every config duration is eventually added to or taken
//! from a clock (`SystemTime::now() - retention`, `Instant + request_timeout`)
//! or multiplied (the default lease is twice `request_timeout`), and those
//! operations panic on overflow. A value that `check` accepted used to stop
//! the purge loop or the dispatcher hours later. Checked at load instead, an
//! absurd value is a config error with file, line and column, from `check`,
//! `serve` and a reload alike (which then keeps the old config), and every
//! later computation stays in range.
//!
//! Each maximum is far above any useful setting. `docs/configuration.md`
//! lists them; keep the two in step.

/// Seconds in a minute, hour, day: maxima are written in these.
pub(crate) const MINUTE: u64 = 60;
pub(crate) const HOUR: u64 = 60 * MINUTE;
pub(crate) const DAY: u64 = 24 * HOUR;
/// A year as `humantime` counts it (365.25 days), so `retention = "10y"` is
/// exactly the maximum rather than a few hours over it.
pub(crate) const YEAR: u64 = 31_557_600;

/// `[server] read_timeout`: the time to receive one whole request.
pub(crate) const READ_TIMEOUT: u64 = HOUR;
/// `[server] idle_timeout`: a connection kept without a request.
pub(crate) const IDLE_TIMEOUT: u64 = HOUR;
/// `[server] shutdown_grace`: how long a stop may wait for in-flight work.
pub(crate) const SHUTDOWN_GRACE: u64 = HOUR;
/// `[store] retention`: how long finished deliveries are kept.
pub(crate) const RETENTION: u64 = 10 * YEAR;
/// `[store] statement_timeout`: PostgreSQL takes at most `i32::MAX` ms (24.8 days).
pub(crate) const STATEMENT_TIMEOUT: u64 = DAY;
/// `[retry] initial_backoff`.
pub(crate) const INITIAL_BACKOFF: u64 = DAY;
/// `[retry] max_backoff`: the longest wait between two attempts.
pub(crate) const MAX_BACKOFF: u64 = 7 * DAY;
/// `[retry] request_timeout`: one call to a CI API.
pub(crate) const REQUEST_TIMEOUT: u64 = DAY;
/// `[rules.concurrency] debounce`: how long a job waits before its first attempt.
pub(crate) const DEBOUNCE: u64 = DAY;
/// `[rules.status] poll`: how long a job waits for a completion event
/// before asking the CI, and between two reads.
pub(crate) const STATUS_POLL: u64 = DAY;
/// `[rules.status] poll_timeout`: how long a job's result is waited for.
pub(crate) const STATUS_POLL_TIMEOUT: u64 = 30 * DAY;
/// Characters in a rendered status context (Bitbucket's build status `key`
/// takes at most 255).
pub(crate) const STATUS_CONTEXT: usize = 255;
/// Characters in a rendered concurrency group (stored with every job of a
/// grouped rule, and compared at every ingest of its group).
pub(crate) const GROUP: usize = 512;
/// `[dispatch] lease`: must exceed `request_timeout`; its default is twice it.
pub(crate) const LEASE: u64 = 2 * DAY;
/// `[sources.NAME] tolerance`: accepted clock skew of a signed timestamp.
pub(crate) const TOLERANCE: u64 = DAY;
/// Any duration key without a maximum of its own: still far from overflowing
/// a clock, which is what matters for keys added later.
pub(crate) const DURATION: u64 = 10 * YEAR;

/// `[dispatch] concurrency`: trigger requests in flight at once per replica
/// (CI APIs rate-limit far below this); each may hold two file descriptors,
/// which the listeners' connection cap leaves free.
pub(crate) const DISPATCH_CONCURRENCY: u32 = 1024;

/// `[store] pool_size`: PostgreSQL connections per replica.
pub(crate) const POOL_SIZE: u32 = 1000;

/// Characters in a rule's name (it is in every summary, job, log line and
/// metric label of the rule).
pub(crate) const RULE_NAME: usize = 200;

/// Bytes in a KiB, MiB, GiB.
pub(crate) const KIB: u64 = 1024;
pub(crate) const MIB: u64 = 1024 * KIB;
pub(crate) const GIB: u64 = 1024 * MIB;

/// `[server] max_body`: the largest webhook body (GitHub caps its own at 25 MB).
pub(crate) const MAX_BODY: u64 = GIB;
/// `[server] body_memory`: body bytes held at once over all requests.
pub(crate) const BODY_MEMORY: u64 = 64 * GIB;
/// Any size key without a maximum of its own.
pub(crate) const SIZE: u64 = 64 * GIB;

/// Operators in one expression (`if`, or one `{{ }}` / `{% %}` of a
/// template): `and`, `not`, `==`, `.`, `|`, `(`, `-`, ... The template
/// engine parses and compiles chains of them recursively, so an expression
/// of 10,000 `not` overflowed the stack and aborted the daemon on reload.
pub(crate) const EXPRESSION_OPERATORS: usize = 256;
/// Brackets (`(`, `[`, `{`) open at once inside one expression.
pub(crate) const EXPRESSION_NESTING: usize = 32;
/// Template blocks (`{% if %}`, `{% for %}`, ...) open at once.
pub(crate) const TEMPLATE_BLOCK_NESTING: usize = 16;
/// Macro calls, includes and recursive loops in progress at once while a
/// template renders (minijinja's own default is 500, deeper than a 2 MiB
/// worker stack holds in a debug build).
pub(crate) const TEMPLATE_RECURSION: usize = 100;

/// Engine steps (instructions) one render of a template or `if` may take:
/// a loop over a push's 8,000 changed paths takes about 50,000, so a loop
/// with conditions over the 100,000 paths of a very large monorepo push
/// fits; a nested loop over a long payload string stops within a second.
pub(crate) const TEMPLATE_FUEL: u64 = 2_000_000;

/// Characters in one glob pattern (`branches`, `paths`, ...).
pub(crate) const GLOB_LENGTH: usize = 1024;
/// `{a,b}` alternations open at once in one glob: each is a group in the
/// regex it compiles to, and the regex compiler refuses (by panicking inside
/// `globset`) a pattern nested 250 deep.
pub(crate) const GLOB_NESTING: usize = 8;
