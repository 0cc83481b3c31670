//! Templates and `if` expressions, compiled once at config load. A leaf below
//! `rules` and `target` (both render with it); it depends only on config
//! limits, `suggest` and the complexity checks of `rules::bounds`.
//!
//! Every templated string in a rule becomes a named template in one
//! [`minijinja::Environment`] per config. The engine runs with strict
//! undefined handling: a name that does not exist is an error, never an empty
//! string, and so is printing `none` into text.
//!
//! A string that is exactly one `{{ expr }}` keeps the expression's native
//! type: it is compiled as `{{ (expr) | <json filter> }}` and the JSON is parsed back,
//! so `{{ body.pull_request.number }}` renders as the number `2`, not `"2"`.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

/// The names templates may use at the top level.
pub const SCOPE_ROOTS: [&str; 3] = ["event", "body", "headers"];

/// A value in a trigger whose strings may be templates.
#[derive(Debug, Clone)]
pub enum TemplateValue {
    /// No template syntax anywhere: used as is.
    Literal(serde_json::Value),
    /// Text with template parts; renders to a string.
    Text(String),
    /// Exactly one `{{ expr }}`; renders to the expression's JSON value.
    Native(String),
    Array(Vec<TemplateValue>),
    Table(BTreeMap<String, TemplateValue>),
}

impl TemplateValue {
    /// The literal string, when the value has no template parts.
    pub fn as_literal_str(&self) -> Option<&str> {
        match self {
            TemplateValue::Literal(serde_json::Value::String(s)) => Some(s),
            _ => None,
        }
    }
}

/// A compiled `if` expression.
#[derive(Debug, Clone)]
pub struct Condition {
    name: String,
    pub source: String,
}

/// Builds the template environment for one config.
pub struct TemplateCompiler {
    env: Environment<'static>,
    needs_body: bool,
    event_fields: &'static [&'static str],
}

/// Compiled templates, shared by every evaluation of one config.
#[derive(Clone)]
pub struct Templates {
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_debug(false);
    // Macro calls, includes and recursive loops at render time: an error past
    // this depth, well before a worker's 2 MiB stack runs out.
    env.set_recursion_limit(crate::config::limits::TEMPLATE_RECURSION);
    // Instructions per render: a loop over a payload's strings (a nested
    // `for` over a 100 KB commit message) held a worker for minutes and the
    // daemon with it; past the budget the rule fails with a reason.
    env.set_fuel(Some(crate::config::limits::TEMPLATE_FUEL));
    env.set_formatter(|out, state, value| {
        if value.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "a null value cannot be written into text; use `{{ x or 'fallback' }}` or an `if`",
            ));
        }
        minijinja::escape_formatter(out, state, value)
    });
    env.add_filter(NATIVE_FILTER, native_json);
    env
}

/// The filter a single-expression template is wrapped in.
const NATIVE_FILTER: &str = "__hookbridge_native";

/// The value as JSON; undefined is an error here too (`tojson` would write `null`).
fn native_json(value: Value) -> Result<String, Error> {
    if value.is_undefined() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            "the expression is undefined",
        ));
    }
    serde_json::to_string(&value).map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))
}

/// True when the string uses template syntax at all.
fn has_template_syntax(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// The inner expression when `s` is exactly one `{{ expr }}`.
fn single_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

impl TemplateCompiler {
    /// `event_fields` are the names valid after `event.`, checked statically.
    pub fn new(event_fields: &'static [&'static str]) -> Self {
        TemplateCompiler {
            env: new_environment(),
            needs_body: false,
            event_fields,
        }
    }

    /// Compile one string. `name` identifies it in errors (`rule 'x' trigger.branch`).
    pub fn text(&mut self, name: &str, source: &str) -> Result<TemplateValue, String> {
        self.text_with(name, source, &[])
    }

    /// Compile one string whose scope has `extra` names besides
    /// [`SCOPE_ROOTS`] (a status context sees `rule`); the caller renders
    /// it against a scope that has them.
    pub fn text_with(&mut self, name: &str, source: &str, extra: &[&str]) -> Result<TemplateValue, String> {
        if !has_template_syntax(source) {
            return Ok(TemplateValue::Literal(serde_json::Value::String(
                source.to_owned(),
            )));
        }
        if let Some(expr) = single_expression(source) {
            let wrapped = format!("{{{{ ({expr}) | {NATIVE_FILTER} }}}}");
            self.add(name, wrapped, extra)?;
            return Ok(TemplateValue::Native(name.to_owned()));
        }
        self.add(name, source.to_owned(), extra)?;
        Ok(TemplateValue::Text(name.to_owned()))
    }

    /// Compile a TOML value; strings anywhere inside may be templates.
    pub fn value(&mut self, name: &str, value: &toml::Value) -> Result<TemplateValue, String> {
        Ok(match value {
            toml::Value::String(s) => self.text(name, s)?,
            toml::Value::Integer(i) => TemplateValue::Literal((*i).into()),
            toml::Value::Float(f) => TemplateValue::Literal(
                serde_json::Number::from_f64(*f)
                    .map(serde_json::Value::Number)
                    .ok_or_else(|| format!("{name}: {f} is not a finite number"))?,
            ),
            toml::Value::Boolean(b) => TemplateValue::Literal((*b).into()),
            toml::Value::Datetime(d) => TemplateValue::Literal(d.to_string().into()),
            toml::Value::Array(items) => TemplateValue::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.value(&format!("{name}[{i}]"), v))
                    .collect::<Result<_, _>>()?,
            ),
            toml::Value::Table(table) => TemplateValue::Table(
                table
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.value(&format!("{name}.{k}"), v)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }

    /// Compile an `if` expression.
    pub fn condition(&mut self, name: &str, source: &str) -> Result<Condition, String> {
        let expr = source.trim();
        if expr.contains("{{") || expr.contains("{%") {
            return Err(
                "`if` is an expression, not a template: write `event.branch == 'main'`, without `{{ }}`"
                    .into(),
            );
        }
        self.add(name, format!("{{% if {expr} %}}1{{% else %}}0{{% endif %}}"), &[])?;
        Ok(Condition {
            name: name.to_owned(),
            source: expr.to_owned(),
        })
    }

    fn add(&mut self, name: &str, source: String, extra: &[&str]) -> Result<(), String> {
        // Before the parser sees it: minijinja recurses without a limit on
        // some shapes (`not not not …`), see `bounds`.
        crate::rules::bounds::check_template(&source).map_err(|e| e.to_string())?;
        self.env
            .add_template_owned(name.to_owned(), source)
            .map_err(|e| describe_error(&e))?;
        let template = self.env.get_template(name).map_err(|e| describe_error(&e))?;
        for var in template.undeclared_variables(true) {
            let mut parts = var.splitn(3, '.');
            let root = parts.next().unwrap_or_default();
            if !SCOPE_ROOTS.contains(&root) && !extra.contains(&root) {
                let roots = SCOPE_ROOTS.iter().chain(extra);
                let hint = crate::config::diagnostic::suggest(root, roots.clone().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                let also: String = extra.iter().map(|r| format!(", `{r}`")).collect();
                return Err(format!(
                    "unknown variable `{root}`: templates can use `event`, `body`{also} and `headers`{hint}"
                ));
            }
            if root == "body" {
                self.needs_body = true;
            }
            if root == "event"
                && let Some(field) = parts.next()
                && !self.event_fields.contains(&field)
            {
                let hint = crate::config::diagnostic::suggest(field, self.event_fields.iter().copied())
                    .map(|s| format!("; did you mean `event.{s}`?"))
                    .unwrap_or_default();
                return Err(format!("`event.{field}` is not an event field{hint}"));
            }
        }
        Ok(())
    }

    pub fn finish(self) -> (Templates, bool) {
        (
            Templates {
                env: Arc::new(self.env),
            },
            self.needs_body,
        )
    }
}

/// A minijinja error as one line: what went wrong, without engine internals.
/// An error inside a macro or include is wrapped ("error in \"t\""); the
/// innermost one says what happened.
fn describe_error(e: &Error) -> String {
    let mut e = e;
    while let Some(inner) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<Error>()) {
        e = inner;
    }
    let detail = e
        .detail()
        .map(str::to_owned)
        .unwrap_or_else(|| e.kind().to_string());
    match e.kind() {
        ErrorKind::SyntaxError => match e.line() {
            Some(line) if line > 1 => format!("template syntax error on line {line}: {detail}"),
            _ => format!("template syntax error: {detail}"),
        },
        ErrorKind::UndefinedError => "undefined value".to_owned(),
        ErrorKind::OutOfFuel => format!(
            "the template took more than {} steps for this payload; loop over less",
            crate::config::limits::TEMPLATE_FUEL
        ),
        _ => detail,
    }
}

impl Templates {
    /// An empty set, for rule sets without templates.
    pub fn empty() -> Self {
        TemplateCompiler::new(&[]).finish().0
    }

    /// Render a value against a scope. The error names what failed but holds no payload data.
    pub fn render(&self, value: &TemplateValue, scope: &Value) -> Result<serde_json::Value, String> {
        match value {
            TemplateValue::Literal(v) => Ok(v.clone()),
            TemplateValue::Text(name) => self.render_named(name, scope).map(serde_json::Value::String),
            TemplateValue::Native(name) => {
                let json = self.render_named(name, scope)?;
                serde_json::from_str(&json).map_err(|e| format!("{name}: value is not JSON ({e})"))
            }
            TemplateValue::Array(items) => items
                .iter()
                .map(|v| self.render(v, scope))
                .collect::<Result<Vec<_>, _>>()
                .map(serde_json::Value::Array),
            TemplateValue::Table(table) => table
                .iter()
                .map(|(k, v)| Ok((k.clone(), self.render(v, scope)?)))
                .collect::<Result<serde_json::Map<_, _>, String>>()
                .map(serde_json::Value::Object),
        }
    }

    /// Evaluate an `if` expression.
    pub fn test(&self, condition: &Condition, scope: &Value) -> Result<bool, String> {
        Ok(self.render_named(&condition.name, scope)? == "1")
    }

    fn render_named(&self, name: &str, scope: &Value) -> Result<String, String> {
        let template = self.env.get_template(name).map_err(|e| format!("{name}: {e}"))?;
        template.render(scope).map_err(|e| {
            let what = describe_error(&e);
            let hint = if e.kind() == ErrorKind::UndefinedError {
                " (a name in the template does not exist in this event; guard it with `is defined`)"
            } else {
                ""
            };
            format!("{name}: {what}{hint}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    const FIELDS: &[&str] = &["branch", "tag", "sha"];

    fn compile(src: &str) -> (Templates, TemplateValue) {
        let mut c = TemplateCompiler::new(FIELDS);
        let v = c.text("t", src).unwrap();
        (c.finish().0, v)
    }

    #[test]
    fn single_expression_keeps_native_type() {
        let (t, v) = compile("{{ body.n }}");
        let scope = context! { body => context! { n => 2, flag => true } };
        assert_eq!(t.render(&v, &scope).unwrap(), serde_json::json!(2));
        let (t, v) = compile("{{ body.flag }}");
        assert_eq!(t.render(&v, &scope).unwrap(), serde_json::json!(true));
    }

    #[test]
    fn mixed_text_renders_a_string() {
        let (t, v) = compile("pr-{{ body.n }}");
        let scope = context! { body => context! { n => 2 } };
        assert_eq!(t.render(&v, &scope).unwrap(), serde_json::json!("pr-2"));
    }

    /// A nested loop over a long payload string stops at the fuel budget,
    /// as an error of this one render, instead of running for minutes.
    #[test]
    fn a_render_that_runs_too_long_is_an_error() {
        let (t, v) = compile("{% for a in body.m %}{% for b in body.m %}{% endfor %}{% endfor %}n");
        let scope = context! { body => context! { m => "x".repeat(100_000) } };
        let e = t.render(&v, &scope).unwrap_err();
        assert!(e.contains("took more than"), "{e}");
        // An ordinary loop over a push's 8,000 paths stays well within it.
        let (t, v) =
            compile("{% for p in body.paths %}{% if p is startingwith('docs/') %}d{% endif %}{% endfor %}n");
        let paths: Vec<String> = (0..8000).map(|i| format!("src/f{i}.rs")).collect();
        let scope = context! { body => context! { paths => paths } };
        assert_eq!(t.render(&v, &scope).unwrap(), serde_json::json!("n"));
    }

    #[test]
    fn undefined_names_are_errors() {
        let (t, v) = compile("{{ body.missing }}");
        let scope = context! { body => context! { n => 2 } };
        assert!(t.render(&v, &scope).unwrap_err().contains("undefined"));
    }

    #[test]
    fn null_in_text_is_an_error() {
        let (t, v) = compile("v{{ event.tag }}");
        let scope = context! { event => context! { tag => () } };
        assert!(t.render(&v, &scope).unwrap_err().contains("null"));
    }

    #[test]
    fn unknown_roots_and_event_fields_fail_at_compile() {
        let mut c = TemplateCompiler::new(FIELDS);
        assert!(
            c.text("a", "{{ evnt.branch }}")
                .unwrap_err()
                .contains("did you mean `event`")
        );
        assert!(
            c.text("b", "{{ event.bramch }}")
                .unwrap_err()
                .contains("event.branch")
        );
        assert!(c.text("c", "{{ event.branch ").unwrap_err().contains("syntax"));
    }

    #[test]
    fn conditions() {
        let mut c = TemplateCompiler::new(FIELDS);
        let cond = c
            .condition("if", "event.branch == 'main' and not body.x")
            .unwrap();
        let (t, needs_body) = c.finish();
        assert!(needs_body);
        let scope = context! { event => context! { branch => "main" }, body => context! { x => false } };
        assert!(t.test(&cond, &scope).unwrap());
    }

    #[test]
    fn literal_strings_skip_the_engine() {
        let (_, v) = compile("deploy_docker");
        assert_eq!(v.as_literal_str(), Some("deploy_docker"));
    }
}
