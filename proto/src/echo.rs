//! Bounds on what error replies copy from a request: a name quoted in a message is cut to
//! `MAX_ECHOED_NAME` bytes, a whole message to `MAX_REPLY_MESSAGE`, so that a reply stays
//! small whatever the request holds (a metric named with a megabyte of text must not come
//! back in the 400).

use std::borrow::Cow;

/// The most bytes of a name from a request (a metric name, a header, a path) an error
/// message quotes.
pub const MAX_ECHOED_NAME: usize = 128;

/// The most bytes of an error message a reply carries.
pub const MAX_REPLY_MESSAGE: usize = 1024;

/// The most bytes the marker of a cut takes: `… (` (5), a `usize` (20), ` bytes)` (7).
const MAX_MARKER: usize = 32;

/// `name` as an error message quotes it: as it is up to `MAX_ECHOED_NAME` bytes, else its
/// first bytes (on a character boundary), `…` and its length, e.g. `mmm… (1000000 bytes)`.
pub fn echoed_name(name: &str) -> Cow<'_, str> {
    cut(name, MAX_ECHOED_NAME)
}

/// `message` as a reply carries it: at most `MAX_REPLY_MESSAGE` bytes, cut as
/// [`echoed_name`] cuts when longer.
pub fn reply_message(message: String) -> String {
    if message.len() <= MAX_REPLY_MESSAGE {
        return message;
    }
    cut(&message, MAX_REPLY_MESSAGE - MAX_MARKER).into_owned()
}

/// `text` as it is up to `keep` bytes, else its first bytes up to `keep` (on a character
/// boundary), `…` and its length.
fn cut(text: &str, keep: usize) -> Cow<'_, str> {
    if text.len() <= keep {
        return Cow::Borrowed(text);
    }
    let mut end = keep;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_messages_are_unchanged() {
        let name = "n".repeat(MAX_ECHOED_NAME);
        assert!(matches!(echoed_name(&name), Cow::Borrowed(n) if n == name));
        let message = "m".repeat(MAX_REPLY_MESSAGE);
        assert_eq!(reply_message(message.clone()), message);
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary_with_their_length() {
        let name = "m".repeat(1_000_000);
        let echoed = echoed_name(&name);
        assert_eq!(
            echoed,
            format!("{}… (1000000 bytes)", "m".repeat(MAX_ECHOED_NAME))
        );
        // 'é' is two bytes: the cut falls back to before the one it would split.
        let name = format!("a{}", "é".repeat(100));
        let echoed = echoed_name(&name);
        assert!(
            echoed.starts_with(&format!("a{}…", "é".repeat(63))),
            "{echoed}"
        );
        assert!(echoed.ends_with("… (201 bytes)"), "{echoed}");
    }

    #[test]
    fn long_messages_fit_the_reply_bound() {
        for len in [MAX_REPLY_MESSAGE + 1, 10_000_000] {
            let message = reply_message("é".repeat(len / 2 + 1));
            assert!(message.len() <= MAX_REPLY_MESSAGE, "{}", message.len());
            assert!(message.ends_with(" bytes)"), "{message}");
        }
        let longest = format!("… ({} bytes)", usize::MAX);
        assert!(longest.len() <= MAX_MARKER);
    }
}
