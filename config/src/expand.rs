//! Config references, as the OpenTelemetry Collector's confmap resolves them, so a Collector
//! config's habits carry over to every Weir config file: `${env:NAME}`, `${NAME}` (the env
//! scheme is the default, as in the Collector), `${env:NAME:-default}`, `${file:PATH}`, and
//! `$$` for a literal `$`.
//!
//! Like the Collector, an unset variable without a default expands to an empty value, with a
//! warning. References are expanded in the document's text before it is parsed, so a value
//! that is a whole scalar is read as YAML (`port: ${env:PORT}` is a number), as the Collector
//! does; to keep the document's structure, a value with a line break is refused, quotes in a
//! value inside a quoted scalar are escaped, and references in comments are left alone.

use crate::error::ConfigError;

/// Expands the references in a config document; `warn` hears of unset variables.
pub fn expand(text: &str, warn: &mut dyn FnMut(String)) -> Result<String, ConfigError> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        expand_line(line, i + 1, &mut out, warn)?;
    }
    Ok(out)
}

/// The YAML context a reference sits in on its line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Plain,
    SingleQuoted,
    DoubleQuoted,
}

fn expand_line(
    line: &str,
    number: usize,
    out: &mut String,
    warn: &mut dyn FnMut(String),
) -> Result<(), ConfigError> {
    let bytes = line.as_bytes();
    let mut context = Context::Plain;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match (context, b) {
            // A comment starts at `#` after whitespace (or at the start): the rest stays.
            (Context::Plain, b'#') if i == 0 || bytes[i - 1].is_ascii_whitespace() => {
                out.push_str(&line[i..]);
                return Ok(());
            }
            (Context::Plain, b'\'') => context = Context::SingleQuoted,
            (Context::SingleQuoted, b'\'') => context = Context::Plain,
            (Context::Plain, b'"') => context = Context::DoubleQuoted,
            (Context::DoubleQuoted, b'"') => context = Context::Plain,
            (Context::DoubleQuoted, b'\\') if i + 1 < bytes.len() => {
                out.push_str(&line[i..i + 2]);
                i += 2;
                continue;
            }
            (_, b'$') if bytes.get(i + 1) == Some(&b'$') => {
                out.push('$');
                i += 2;
                continue;
            }
            (_, b'$') if bytes.get(i + 1) == Some(&b'{') => {
                let Some(len) = line[i + 2..].find('}') else {
                    return Err(ConfigError::Reference {
                        line: number,
                        reason: format!(
                            "`{}` has no closing `}}`; write `$$` for a literal `$`",
                            line[i..].trim_end()
                        ),
                    });
                };
                let reference = &line[i + 2..i + 2 + len];
                let value = resolve(reference, number, warn)?;
                push_in_context(out, &value, context);
                i += len + 3;
                continue;
            }
            _ => {}
        }
        // Copy the whole UTF-8 character.
        let width = line[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&line[i..i + width]);
        i += width;
    }
    Ok(())
}

/// The value `reference` (what is between `${` and `}`) stands for.
fn resolve(
    reference: &str,
    line: usize,
    warn: &mut dyn FnMut(String),
) -> Result<String, ConfigError> {
    let err = |reason: String| ConfigError::Reference { line, reason };
    let (scheme, rest) = match reference.split_once(':') {
        // `${NAME:-default}` is the env scheme with a default, not a scheme named NAME.
        Some((scheme, rest)) if !rest.starts_with('-') => (scheme, rest),
        _ => ("env", reference),
    };
    let value = match scheme {
        "env" => {
            let (name, default) = match rest.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (rest, None),
            };
            if !is_env_name(name) {
                return Err(err(format!(
                    "`${{{reference}}}`: `{name}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"
                )));
            }
            match (std::env::var(name), default) {
                (Ok(v), _) => v,
                (Err(std::env::VarError::NotUnicode(_)), _) => {
                    return Err(err(format!(
                        "`${{{reference}}}`: the environment variable {name} is not valid UTF-8"
                    )));
                }
                (Err(std::env::VarError::NotPresent), Some(default)) => default.to_owned(),
                (Err(std::env::VarError::NotPresent), None) => {
                    warn(format!(
                        "line {line}: the environment variable {name} is not set; `${{{reference}}}` expands to an empty value"
                    ));
                    String::new()
                }
            }
        }
        "file" => {
            let mut v = std::fs::read_to_string(rest)
                .map_err(|e| err(format!("`${{{reference}}}`: cannot read {rest}: {e}")))?;
            // Secret files usually end with a newline that is not part of the secret.
            if v.ends_with('\n') {
                v.pop();
                if v.ends_with('\r') {
                    v.pop();
                }
            }
            v
        }
        other => {
            return Err(err(format!(
                "`${{{reference}}}`: the `{other}` scheme is not supported; use env or file (write `$$` for a literal `$`)"
            )));
        }
    };
    if value.contains(['\n', '\r']) {
        return Err(err(format!(
            "`${{{reference}}}` has a line break; only single-line values can be substituted"
        )));
    }
    Ok(value)
}

/// `[A-Za-z_][A-Za-z0-9_]*`, the Collector's rule for variable names.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Writes `value` so that it stays one value of the scalar it is in.
fn push_in_context(out: &mut String, value: &str, context: Context) {
    match context {
        Context::Plain => out.push_str(value),
        Context::SingleQuoted => out.push_str(&value.replace('\'', "''")),
        Context::DoubleQuoted => {
            for c in value.chars() {
                if matches!(c, '"' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> (Result<String, ConfigError>, Vec<String>) {
        let mut warnings = Vec::new();
        let r = expand(text, &mut |w| warnings.push(w));
        (r, warnings)
    }

    fn ok(text: &str) -> String {
        run(text).0.unwrap()
    }

    // Each test uses variables of its own: tests run in parallel in one process.
    #[test]
    fn env_references_in_both_spellings_and_with_defaults() {
        // SAFETY: no other test reads or writes these names.
        unsafe {
            std::env::set_var("WEIR_EXPAND_T1_PORT", "4317");
            std::env::set_var("WEIR_EXPAND_T1_HOST", "10.0.0.1");
        }
        assert_eq!(
            ok("endpoint: ${env:WEIR_EXPAND_T1_HOST}:${WEIR_EXPAND_T1_PORT}\n"),
            "endpoint: 10.0.0.1:4317\n"
        );
        assert_eq!(
            ok("a: ${env:WEIR_EXPAND_T1_UNSET:-fallback}\nb: ${WEIR_EXPAND_T1_UNSET:-}\n"),
            "a: fallback\nb: \n"
        );
    }

    #[test]
    fn an_unset_variable_is_empty_with_a_warning_as_in_the_collector() {
        let (r, warnings) = run("password: \"${env:WEIR_EXPAND_T2_UNSET}\"\n");
        assert_eq!(r.unwrap(), "password: \"\"\n");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("WEIR_EXPAND_T2_UNSET"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar_and_comments_are_left_alone() {
        assert_eq!(
            ok(
                "regex: \"^a$$\"\nlit: $${env:X}\n# ${file:/nonexistent} ${bad\nk: v # ${file:/nonexistent}\n"
            ),
            "regex: \"^a$\"\nlit: ${env:X}\n# ${file:/nonexistent} ${bad\nk: v # ${file:/nonexistent}\n"
        );
        // A lone `$` not followed by `{` or `$` stays.
        assert_eq!(ok("price: 5$\n"), "price: 5$\n");
    }

    #[test]
    fn file_references_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(
            ok(&format!("password: ${{file:{}}}\n", path.display())),
            "password: s3cret\n"
        );
        let (r, _) = run("password: ${file:/nonexistent/weir-secret}\n");
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("line 1:") && e.contains("/nonexistent/weir-secret"),
            "{e}"
        );
    }

    #[test]
    fn values_stay_inside_their_quoted_scalar() {
        // SAFETY: no other test reads or writes this name.
        unsafe { std::env::set_var("WEIR_EXPAND_T5", r#"a"b\c'd"#) };
        assert_eq!(
            ok("x: \"${env:WEIR_EXPAND_T5}\"\ny: '${env:WEIR_EXPAND_T5}'\n"),
            "x: \"a\\\"b\\\\c'd\"\ny: 'a\"b\\c''d'\n"
        );
    }

    #[test]
    fn bad_references_name_the_line_and_the_reference() {
        // SAFETY: no other test reads or writes this name.
        unsafe { std::env::set_var("WEIR_EXPAND_T6_MULTI", "a\nb") };
        for (text, want) in [
            ("a: 1\nb: ${env:WEIR_EXPAND_T6_MULTI}\n", "line 2:"),
            ("a: ${http:example.com}\n", "scheme is not supported"),
            ("a: ${env:9BAD}\n", "not an environment variable name"),
            ("a: ${env:UNCLOSED\n", "no closing"),
        ] {
            let e = run(text).0.unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn text_without_references_is_unchanged() {
        let text = "a: \"b\" # c\n'd': e\n";
        assert_eq!(ok(text), text);
    }
}
