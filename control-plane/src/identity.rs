//! What a gateway may claim about itself on the watch stream: the bounds on its instance id,
//! labels and build string (so a token holder cannot fill the database with huge or endless
//! rows), and which instance ids a gateway token may connect as (`auth.tokens[].instances`).

use std::collections::BTreeMap;

/// The longest instance id, in bytes: a DNS name's length, so any pod or host name fits.
pub const MAX_INSTANCE_ID_BYTES: usize = 253;
/// The most labels one gateway may report.
pub const MAX_LABELS: usize = 32;
/// The longest label name, in bytes.
pub const MAX_LABEL_NAME_BYTES: usize = 128;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// The longest build string, in bytes.
pub const MAX_BUILD_BYTES: usize = 128;
/// The longest NACK reason kept, in bytes; a longer one is cut (at a character boundary).
pub const MAX_ERROR_BYTES: usize = 4096;

/// Checks the instance id, labels and build a gateway reported; the error says which bound
/// was passed.
pub fn check_claims(
    instance_id: &str,
    labels: &BTreeMap<String, String>,
    build: &str,
) -> Result<(), String> {
    if instance_id.trim().is_empty() {
        return Err("Hello.instance_id is empty: every gateway needs a stable instance id".into());
    }
    if instance_id.len() > MAX_INSTANCE_ID_BYTES {
        return Err(format!(
            "Hello.instance_id is {} bytes long: at most {MAX_INSTANCE_ID_BYTES}",
            instance_id.len()
        ));
    }
    if instance_id.chars().any(char::is_control) || instance_id.trim() != instance_id {
        return Err("Hello.instance_id holds control characters or surrounding whitespace".into());
    }
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "Hello.labels has {} labels: at most {MAX_LABELS}",
            labels.len()
        ));
    }
    for (name, value) in labels {
        if name.is_empty() || name.len() > MAX_LABEL_NAME_BYTES {
            return Err(format!(
                "Hello.labels: a label name must have 1 to {MAX_LABEL_NAME_BYTES} bytes, got {}",
                name.len()
            ));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            return Err(format!(
                "Hello.labels.{name}: the value is {} bytes long: at most {MAX_LABEL_VALUE_BYTES}",
                value.len()
            ));
        }
    }
    if build.len() > MAX_BUILD_BYTES {
        return Err(format!(
            "Hello.build is {} bytes long: at most {MAX_BUILD_BYTES}",
            build.len()
        ));
    }
    Ok(())
}

/// A NACK reason cut to [`MAX_ERROR_BYTES`] at a character boundary.
pub fn bounded_error(error: &str) -> &str {
    if error.len() <= MAX_ERROR_BYTES {
        return error;
    }
    let mut end = MAX_ERROR_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

/// Whether `instance_id` matches `pattern`, where `*` stands for any run of characters
/// (also none) and everything else matches itself.
pub fn matches_pattern(pattern: &str, instance_id: &str) -> bool {
    let mut parts = pattern.split('*');
    // `split` yields at least one part: the text before the first `*` (all of it if none).
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = instance_id.strip_prefix(first) else {
        return false;
    };
    let mut middle: Vec<&str> = parts.collect();
    let Some(last) = middle.pop() else {
        // No `*`: the whole id must equal the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_with_stars() {
        assert!(matches_pattern("gw-1", "gw-1"));
        assert!(!matches_pattern("gw-1", "gw-10"));
        assert!(matches_pattern("gw-eu-*", "gw-eu-7f9c"));
        assert!(!matches_pattern("gw-eu-*", "gw-us-7f9c"));
        assert!(matches_pattern("*", "anything"));
        assert!(matches_pattern("*-eu-*", "gw-eu-1"));
        assert!(matches_pattern("a*b*c", "abc"));
        assert!(matches_pattern("a*b*c", "axxbyyc"));
        assert!(!matches_pattern("a*b*c", "axxcyyb"));
        // The suffix is not matched inside the prefix.
        assert!(!matches_pattern("ab*ab", "ab"));
        assert!(matches_pattern("ab*ab", "abab"));
    }

    #[test]
    fn claims_are_bounded() {
        let none = BTreeMap::new();
        assert!(check_claims("gw-1", &none, "1.0").is_ok());
        let long = "x".repeat(MAX_INSTANCE_ID_BYTES + 1);
        assert!(check_claims(&long, &none, "").unwrap_err().contains("253"));
        assert!(check_claims(" gw", &none, "").is_err());
        assert!(check_claims("gw\n1", &none, "").is_err());
        let many: BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(
            check_claims("gw", &many, "")
                .unwrap_err()
                .contains("labels")
        );
        let big_value = [("zone".to_string(), "v".repeat(MAX_LABEL_VALUE_BYTES + 1))].into();
        assert!(
            check_claims("gw", &big_value, "")
                .unwrap_err()
                .contains("zone")
        );
        let empty_name = [(String::new(), "v".to_string())].into();
        assert!(check_claims("gw", &empty_name, "").is_err());
        assert!(check_claims("gw", &none, &"b".repeat(MAX_BUILD_BYTES + 1)).is_err());
    }

    #[test]
    fn errors_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_BYTES);
        let cut = bounded_error(&long);
        assert!(cut.len() <= MAX_ERROR_BYTES && cut.len() >= MAX_ERROR_BYTES - 1);
        assert_eq!(bounded_error("short"), "short");
    }
}
