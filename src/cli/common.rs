//! Pieces shared by the offline tools (`sign`, `explain`, `test`).

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
pub use crate::explain::{Rendered, format_request, parse_header, render, request_headers};
use crate::source::Source;

/// Print a command's error as `error: ...` and turn the outcome into an exit code.
pub fn finish(outcome: Result<ExitCode, String>) -> ExitCode {
    outcome.unwrap_or_else(|e| {
        super::say(format_args!("error: {e}"));
        ExitCode::FAILURE
    })
}

/// Run a one-shot command's async work on a current-thread runtime.
pub fn block_on(work: impl Future<Output = Result<(), String>>) -> ExitCode {
    finish(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))
            .and_then(|rt| rt.block_on(work))
            .map(|()| ExitCode::SUCCESS),
    )
}

/// The named source, or an error listing the ones the config has.
pub fn find_source<'a>(config: &'a Config, name: &str) -> Result<&'a Source, String> {
    config.sources.get(name).ok_or_else(|| {
        format!(
            "unknown source `{name}`; the config has: {}",
            config.sources.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

/// Left-aligned columns separated by two spaces; the first row is the header.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `text` fit for a terminal: control characters other than newlines (an
/// escape sequence in a CI's answer, a payload's repository name) are shown
/// escaped (`\u{1b}`) instead of being obeyed by the operator's terminal.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Read a payload file, with the path in the error.
pub fn read_payload(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(
            terminal_safe("ok\x1b[2J\x07\r\tdone\nnext \u{9b}"),
            "ok\\u{1b}[2J\\u{7}\\r\\tdone\nnext \\u{9b}"
        );
    }
}
