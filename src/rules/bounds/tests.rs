//! The limits hold, and what they let through is safe: the deepest shapes
//! allowed are compiled and rendered on a thread with a 2 MiB stack (the
//! size of a tokio worker's, where a reload and every render run) in the
//! unoptimised test build, whose frames are the largest.

use proptest::prelude::*;
use toml::Spanned;

use super::*;
use crate::rules::filter::PatternList;
use crate::template::TemplateCompiler;

const FIELDS: &[&str] = &["branch", "tag", "sha"];

/// Run `f` on a fresh thread with a 2 MiB stack; a stack overflow aborts the
/// whole test binary, any panic fails the test.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// Compile `expr` as an `if` and evaluate it; `Err` when refused at compile.
fn condition(expr: String) -> Result<Result<bool, String>, String> {
    on_small_stack(move || {
        let mut c = TemplateCompiler::new(FIELDS);
        let cond = c.condition("if", &expr)?;
        let (templates, _) = c.finish();
        let scope = minijinja::context! { event => minijinja::context! { branch => "main" }, body => minijinja::context! { x => 1 } };
        Ok(templates.test(&cond, &scope))
    })
}

fn template(source: String) -> Result<Result<serde_json::Value, String>, String> {
    on_small_stack(move || {
        let mut c = TemplateCompiler::new(FIELDS);
        let value = c.text("t", &source)?;
        let (templates, _) = c.finish();
        let scope = minijinja::context! { event => minijinja::context! { branch => "main" }, body => minijinja::context! { x => 1 } };
        Ok(templates.render(&value, &scope))
    })
}

fn repeat(unit: &str, n: usize) -> String {
    unit.repeat(n)
}

#[test]
fn ten_thousand_and_a_hundred_thousand_not_are_refused() {
    for n in [10_000, 100_000] {
        let expr = format!("{}event", repeat("not ", n));
        let e = condition(expr).unwrap_err();
        assert_eq!(
            e,
            format!("too complex: {n} operators in one expression, at most 256 are allowed")
        );
    }
}

#[test]
fn the_deepest_allowed_expressions_compile_and_run_on_a_small_stack() {
    let max = limits::EXPRESSION_OPERATORS;
    let nest = limits::EXPRESSION_NESTING;
    let shapes = [
        format!("{}event", repeat("not ", max)),
        format!("{}1", repeat("- ", max)),
        format!("{}1", repeat("-", max)),
        format!("body{}", repeat(".x", max)),
        format!("event.branch{}", repeat(" and body", max - 1)),
        format!("event.branch{}", repeat("|lower", max - 1)),
        format!("{}1{}", repeat("(", nest), repeat(")", nest)),
        format!("{}1{}", repeat("[", nest), repeat("]", nest)),
        format!(
            "{}{}1{}",
            repeat("(", nest),
            repeat("not ", max - nest),
            repeat(")", nest)
        ),
        format!("{}1{}", repeat("(-", nest), repeat(")", nest)),
    ];
    for expr in shapes {
        let shown = expr.chars().take(60).collect::<String>();
        // It compiles; evaluating may fail (`-` of a string), but returns.
        if let Err(e) = condition(expr) {
            panic!("{shown}: {e}");
        }
    }
    // Inline `if` is not allowed in `{% if %}`: through a template instead,
    // whose wrapping `({expr}) | json` takes two of the operators.
    let chain = format!("{{{{ {}1 }}}}", repeat("1 if event.branch else ", (max - 2) / 3));
    assert_eq!(template(chain).unwrap(), Ok(serde_json::json!(1)));
    // One more is refused.
    assert!(condition(format!("{}1", repeat("- ", max + 1))).is_err());
    assert!(condition(format!("{}1{}", repeat("(", nest + 1), repeat(")", nest + 1))).is_err());
}

#[test]
fn the_deepest_allowed_blocks_compile_and_run_on_a_small_stack() {
    let blocks = limits::TEMPLATE_BLOCK_NESTING;
    let inner = format!("{{{{ {}1 }}}}", repeat("- ", limits::EXPRESSION_OPERATORS - 3));
    let source = format!(
        "{}{inner}{}",
        repeat("{% if event.branch %}", blocks),
        repeat("{% endif %}", blocks)
    );
    assert!(template(source).unwrap().is_ok());
    let source = format!(
        "{}x{}",
        repeat("{%- for i in [1] -%}", blocks + 1),
        repeat("{% endfor %}", blocks + 1)
    );
    assert_eq!(
        template(source).unwrap_err(),
        TooComplex::Blocks(blocks + 1).to_string()
    );
}

#[test]
fn sequences_of_blocks_and_set_statements_do_not_add_up() {
    let source = repeat("{% if event.branch %}a{% endif %}{% set y = 1 %}{# not #}", 100);
    assert!(template(source).unwrap().is_ok());
}

#[test]
fn raw_blocks_are_skipped_as_minijinja_skips_them() {
    // An unterminated string inside `raw` is text: what follows still counts.
    let source = format!(
        "{{% raw %}}{{{{ \" {{%- endraw -%}}{{{{ {}1 }}}}",
        repeat("not ", 300)
    );
    assert_eq!(
        template(source).unwrap_err(),
        TooComplex::Operators(300).to_string()
    );
    let inner = format!("{{{{ {}1 }}}}", repeat("not ", 300));
    let source = format!("{{% raw %}}{inner}{{% endraw %}}");
    assert_eq!(template(source).unwrap().unwrap(), serde_json::json!(inner));
}

#[test]
fn raw_blocks_cannot_hide_nesting() {
    let source = format!(
        "{}x{}",
        repeat(
            "{% if 1 %}{% raw %}{% endraw %}",
            limits::TEMPLATE_BLOCK_NESTING + 1
        ),
        repeat("{% endif %}", limits::TEMPLATE_BLOCK_NESTING + 1)
    );
    assert!(template(source).is_err());
}

#[test]
fn strings_and_closing_markers_inside_brackets_are_not_operators_or_ends() {
    // `}}` inside a dict does not end the tag for minijinja, nor for us.
    let source = format!("{{{{ {{'a': {{'b': {}1}}}} }}}}", repeat("not ", 300));
    assert_eq!(
        template(source).unwrap_err(),
        TooComplex::Operators(302).to_string()
    );
    let many_strings = format!("{{{{ [{}] }}}}", repeat("'not - . ( }}', ", 500));
    assert!(template(many_strings).unwrap().is_ok());
}

#[test]
fn recursion_at_render_time_is_an_error_not_an_overflow() {
    let recursive_macro = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}".to_owned();
    let e = template(recursive_macro).unwrap().unwrap_err();
    assert!(e.contains("recursion"), "{e}");
    let self_include = "{% include 't' %}".to_owned();
    let e = template(self_include).unwrap().unwrap_err();
    assert!(e.contains("recursion"), "{e}");
}

fn globs(pattern: &str) -> Result<PatternList, String> {
    let list = Spanned::new(0..0, vec![Spanned::new(0..0, pattern.to_owned())]);
    on_small_stack(move || PatternList::compile(&list, true).map_err(|(m, _)| m))
}

#[test]
fn globs_with_250_nested_braces_are_refused() {
    let pattern = format!("{}a{}", repeat("{", 250), repeat("}", 250));
    assert_eq!(
        globs(&pattern).unwrap_err(),
        "glob too complex: `{...}` nested 250 deep, at most 8 are allowed"
    );
    let pattern = format!("{}a{}", repeat("{x,", 250), repeat("}", 250));
    assert!(globs(&pattern).is_err());
    assert!(globs(&"a".repeat(limits::GLOB_LENGTH + 1)).is_err());
}

#[test]
fn the_deepest_allowed_globs_compile() {
    let n = limits::GLOB_NESTING;
    let pattern = format!("{}a{}", repeat("{x,**/", n), repeat("}", n));
    let list = globs(&pattern).unwrap();
    assert!(list.matches("a"));
    // Escaped braces are literals, not nesting.
    let pattern = format!("{}a", repeat("\\{", 50));
    assert!(globs(&pattern).unwrap().matches(&format!("{}a", repeat("{", 50))));
}

/// Pieces that build every kind of nesting the parser knows.
fn expression_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "not ",
        "- ",
        "-",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "1",
        "event.branch",
        ".x",
        " and ",
        " or ",
        "|lower",
        " if ",
        " else ",
        "'",
        "\"",
        ", ",
        ": ",
        "==",
        "~",
        "{{",
        "}}",
        "{%",
        "%}",
        "x",
        "(1)",
        " ",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// `if` expressions of any shape and depth: compiled (or refused) and
    /// evaluated without a panic or a stack overflow.
    #[test]
    fn any_expression(pieces in prop::collection::vec(expression_piece(), 0..700), repeat_by in 1usize..40) {
        let expr = pieces.concat().repeat(repeat_by);
        let _ = condition(expr.clone());
        let _ = template(format!("{{{{ {expr} }}}}"));
        let _ = template(format!("{{% if {expr} %}}y{{% endif %}}"));
    }

    /// Any text as a template.
    #[test]
    fn any_template(s in "\\PC{0,300}") {
        let _ = template(s);
    }

    /// Globs of any shape: compiled or refused, never a panic.
    #[test]
    fn any_glob(
        pieces in prop::collection::vec(
            prop::sample::select(vec!["{", "}", ",", "*", "**", "/", "?", "[", "]", "!", "a", "\\", "-", "^", "é"]),
            0..1100,
        ),
    ) {
        let _ = globs(&pieces.concat());
    }
}
