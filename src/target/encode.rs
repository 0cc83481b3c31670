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
}
