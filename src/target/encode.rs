//! URL path encoding shared by the targets and the CLI: a value the user
//! controls (a branch, a project path) becomes exactly one path segment.

/// Percent-encode `s` as one path segment: everything but the unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`), so a `/` cannot open a new segment.
pub fn path_segment(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// Whether the path of `url` (after `scheme://host`) has a segment `.` or
/// `..`. Values are percent-encoded into single segments (`encode`), which
/// keeps `/` out but leaves a value that is exactly `.` or `..` as it is.
pub fn has_dot_segment(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.split_once('/').map_or("", |(_, path)| path);
    let path = path.split(['?', '#']).next().unwrap_or("");
    // As URL parsers do, `%2e` counts as a dot.
    // `\` too: URL parsers read it as `/` in http(s) URLs.
    path.split(['/', '\\']).any(|segment| {
        let dots = segment.to_ascii_lowercase().replace("%2e", ".");
        dots == "." || dots == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_one_path_segment() {
        assert_eq!(path_segment("feature/x y"), "feature%2Fx%20y");
        assert_eq!(path_segment("release-1.2_rc~1"), "release-1.2_rc~1");
        assert_eq!(path_segment("group/sub/app"), "group%2Fsub%2Fapp");
        assert_eq!(path_segment("../é?#"), "..%2F%C3%A9%3F%23");
    }

    #[test]
    fn dot_segments_are_found_however_written() {
        assert!(has_dot_segment("http://h/a/../b") && has_dot_segment("http://h/."));
        assert!(has_dot_segment("http://h/a/%2E%2e/b") && has_dot_segment("http://h/.%2E"));
        assert!(!has_dot_segment("http://h/a..b/.c/%252E%252E") && !has_dot_segment("http://h"));
        assert!(has_dot_segment("http://h/a\\..\\b") && !has_dot_segment("http://h/a\\..b"));
    }
}
