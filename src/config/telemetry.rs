//! `[telemetry]`: the validated settings of OpenTelemetry traces.
//!
//! A leaf: [`crate::telemetry`] starts the exporter from these settings (and
//! the standard `OTEL_*` variables) without depending on [`crate::config`].

use toml::Spanned;

use super::diagnostic::Diagnostic;
use super::loader::Loader;
use super::raw::RawTelemetry;

/// The path every OTLP/HTTP collector serves traces at, below its base URL.
pub const TRACES_PATH: &str = "/v1/traces";

/// `[telemetry]` as written, checked. Each key left out is `None`: the
/// standard `OTEL_*` variable, or the default, decides it
/// ([`crate::telemetry::otel::plan`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP base URL; spans go to [`traces_url`] of it.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of every span.
    pub service_name: Option<String>,
    /// The share of new traces recorded, in `0.0..=1.0`.
    pub sample_ratio: Option<f64>,
}

/// Where spans go for the OTLP/HTTP base URL `base`: `{base}/v1/traces`,
/// one trailing `/` of `base` dropped (the rule of `OTEL_EXPORTER_OTLP_ENDPOINT`).
pub fn traces_url(base: &str) -> String {
    format!("{}{TRACES_PATH}", base.strip_suffix('/').unwrap_or(base))
}

/// Check `[telemetry]`; `None` when the table is absent.
pub fn compile(raw: Option<&RawTelemetry>, loader: &mut Loader) -> Option<TelemetrySettings> {
    let raw = raw?;
    let otlp_endpoint = raw.otlp_endpoint.as_ref().and_then(|e| endpoint(e, loader));
    let service_name = raw.service_name.as_ref().and_then(|name| {
        if name.get_ref().trim().is_empty() {
            loader.error("`service_name` may not be empty", name.span());
            None
        } else {
            Some(name.get_ref().clone())
        }
    });
    let sample_ratio = raw.sample_ratio.as_ref().and_then(|ratio| {
        let r = *ratio.get_ref();
        if r.is_finite() && (0.0..=1.0).contains(&r) {
            Some(r)
        } else {
            loader.push(
                Diagnostic::error(
                    format!("`sample_ratio` is between 0.0 and 1.0, not {r}"),
                    Some(ratio.span()),
                )
                .with_help("the share of deliveries traced: `1.0` traces every one, `0.1` one in ten"),
            );
            None
        }
    });
    Some(TelemetrySettings {
        otlp_endpoint,
        service_name,
        sample_ratio,
    })
}

/// `otlp_endpoint`: an `http` or `https` base URL with a host, and nothing
/// that would be logged or sent along by mistake (credentials, a query).
fn endpoint(value: &Spanned<String>, loader: &mut Loader) -> Option<String> {
    let text = value.get_ref().trim();
    let span = value.span();
    let url = match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        _ => {
            loader.push(
                Diagnostic::error(
                    format!("`otlp_endpoint` `{text}` is not an http or https URL"),
                    Some(span),
                )
                .with_help("the collector's OTLP/HTTP base URL, e.g. `http://otel-collector:4318`"),
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        loader.mark_sensitive(span.clone());
        loader.push(
            Diagnostic::error("`otlp_endpoint` may not hold credentials", Some(span)).with_help(
                "send them as headers: `OTEL_EXPORTER_OTLP_HEADERS=\"authorization=Bearer ...\"` in the environment",
            ),
        );
        return None;
    }
    if url.query().is_some() || url.fragment().is_some() {
        loader.push(
            Diagnostic::error("`otlp_endpoint` is a base URL, without `?` or `#`", Some(span))
                .with_help(format!("spans go to the base URL followed by `{TRACES_PATH}`")),
        );
        return None;
    }
    if url.path().trim_end_matches('/').ends_with(TRACES_PATH) {
        loader.push(
            Diagnostic::warning(
                format!(
                    "spans would go to `{}`: `otlp_endpoint` is a base URL, `{TRACES_PATH}` is added to it",
                    traces_url(text)
                ),
                Some(span),
            )
            .with_help(format!("leave `{TRACES_PATH}` out")),
        );
    }
    Some(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_go_below_the_base_url() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("https://c/otlp"), "https://c/otlp/v1/traces");
    }
}
