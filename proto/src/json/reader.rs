//! A pull reader over a JSON document: the decoder asks for the next token it expects and
//! builds prost messages directly, with no intermediate tree. Strings without escapes are
//! borrowed from the body; numbers are handed over as their text, so doubles are converted by
//! `str::parse::<f64>` (correctly rounded) rather than by serde_json's default fast path,
//! which is off by one ulp for about one double in ten.
//!
//! The reader only detects syntax errors; their message is serde_json's (see `decode`).

use std::borrow::Cow;

/// Containers nested deeper than this are refused, as serde_json refuses them: it bounds the
/// decoder's recursion, so no document can overflow the stack.
const MAX_DEPTH: u32 = 128;

/// A syntax error: where it is and what the reader expected there.
#[derive(Debug)]
pub(super) struct SyntaxError {
    pub(super) at: usize,
    pub(super) what: &'static str,
}

type Result<T> = std::result::Result<T, SyntaxError>;

/// The kind of the next value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Token {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

pub(super) struct Reader<'b> {
    text: &'b str,
    pos: usize,
    depth: u32,
}

impl<'b> Reader<'b> {
    /// JSON text is UTF-8; checking it once up front lets strings be borrowed as `&str`.
    pub(super) fn new(body: &'b [u8]) -> Result<Self> {
        let text = std::str::from_utf8(body).map_err(|e| SyntaxError {
            at: e.valid_up_to(),
            what: "invalid UTF-8",
        })?;
        Ok(Self {
            text,
            pos: 0,
            depth: 0,
        })
    }

    fn bytes(&self) -> &'b [u8] {
        self.text.as_bytes()
    }

    fn error(&self, what: &'static str) -> SyntaxError {
        SyntaxError { at: self.pos, what }
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes().get(self.pos) {
            self.pos += 1;
        }
    }

    /// The kind of the next value, without consuming it.
    pub(super) fn peek(&mut self) -> Result<Token> {
        self.skip_whitespace();
        match self.bytes().get(self.pos) {
            Some(b'{') => Ok(Token::Object),
            Some(b'[') => Ok(Token::Array),
            Some(b'"') => Ok(Token::String),
            Some(b't' | b'f') => Ok(Token::Bool),
            Some(b'n') => Ok(Token::Null),
            Some(b'-' | b'0'..=b'9') => Ok(Token::Number),
            Some(_) => Err(self.error("expected a value")),
            None => Err(self.error("EOF while parsing a value")),
        }
    }

    /// After the document's value only whitespace may follow.
    pub(super) fn finish(&mut self) -> Result<()> {
        self.skip_whitespace();
        if self.pos == self.text.len() {
            Ok(())
        } else {
            Err(self.error("trailing characters"))
        }
    }

    fn literal(&mut self, literal: &str) -> Result<()> {
        self.skip_whitespace();
        if self.text[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    pub(super) fn null(&mut self) -> Result<()> {
        self.literal("null")
    }

    pub(super) fn boolean(&mut self) -> Result<bool> {
        self.skip_whitespace();
        if self.bytes().get(self.pos) == Some(&b't') {
            self.literal("true").map(|()| true)
        } else {
            self.literal("false").map(|()| false)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.bytes().get(self.pos) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A number, as its text: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    pub(super) fn number(&mut self) -> Result<&'b str> {
        self.skip_whitespace();
        let start = self.pos;
        if self.bytes().get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.bytes().get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.bytes().get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.bytes().get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes().get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(&self.text[start..self.pos])
    }

    /// A string, borrowed from the body unless it has escapes.
    pub(super) fn string(&mut self) -> Result<Cow<'b, str>> {
        self.skip_whitespace();
        if self.bytes().get(self.pos) != Some(&b'"') {
            return Err(self.error("expected a string"));
        }
        self.pos += 1;
        let start = self.pos;
        let run = self.plain_run()?;
        match self.bytes()[self.pos] {
            b'"' => {
                self.pos += 1;
                Ok(Cow::Borrowed(run))
            }
            _ => self.escaped_string(start).map(Cow::Owned),
        }
    }

    /// Advances over characters that need no unescaping; stops at `"` or `\`.
    fn plain_run(&mut self) -> Result<&'b str> {
        let start = self.pos;
        loop {
            match self.bytes().get(self.pos) {
                None => return Err(self.error("EOF while parsing a string")),
                Some(b'"' | b'\\') => return Ok(&self.text[start..self.pos]),
                Some(0x00..=0x1f) => {
                    return Err(self.error("control character in string"));
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    fn escaped_string(&mut self, start: usize) -> Result<String> {
        let mut out = String::with_capacity(self.pos - start + 16);
        out.push_str(&self.text[start..self.pos]);
        // `plain_run` stops only at `"` or `\`.
        while self.bytes()[self.pos] == b'\\' {
            self.pos += 1;
            let escape = self.bytes().get(self.pos).copied();
            self.pos += 1;
            let c = match escape {
                Some(b'"') => '"',
                Some(b'\\') => '\\',
                Some(b'/') => '/',
                Some(b'b') => '\u{8}',
                Some(b'f') => '\u{c}',
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'u') => self.unicode_escape()?,
                _ => {
                    self.pos -= 1;
                    return Err(self.error("invalid escape"));
                }
            };
            out.push(c);
            out.push_str(self.plain_run()?);
        }
        self.pos += 1;
        Ok(out)
    }

    /// The four hex digits after `\u`, and the `\uXXXX` low surrogate that must follow a
    /// high one.
    fn unicode_escape(&mut self) -> Result<char> {
        let high = self.hex4()?;
        let code = match high {
            0xd800..=0xdbff => {
                if !self.text[self.pos..].starts_with("\\u") {
                    return Err(self.error("lone leading surrogate in hex escape"));
                }
                self.pos += 2;
                let low = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&low) {
                    return Err(self.error("lone leading surrogate in hex escape"));
                }
                0x10000 + ((u32::from(high) - 0xd800) << 10) + (u32::from(low) - 0xdc00)
            }
            0xdc00..=0xdfff => return Err(self.error("lone trailing surrogate in hex escape")),
            other => u32::from(other),
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid unicode code point"))
    }

    fn hex4(&mut self) -> Result<u16> {
        let value = self
            .text
            .get(self.pos..self.pos + 4)
            .filter(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|digits| u16::from_str_radix(digits, 16).ok())
            .ok_or_else(|| self.error("invalid escape"))?;
        self.pos += 4;
        Ok(value)
    }

    fn enter(&mut self, open: u8) -> Result<()> {
        self.skip_whitespace();
        if self.bytes().get(self.pos) != Some(&open) {
            return Err(self.error("expected a container"));
        }
        self.depth += 1;
        if self.depth >= MAX_DEPTH {
            return Err(self.error("recursion limit exceeded"));
        }
        self.pos += 1;
        Ok(())
    }

    pub(super) fn begin_object(&mut self) -> Result<()> {
        self.enter(b'{')
    }

    pub(super) fn begin_array(&mut self) -> Result<()> {
        self.enter(b'[')
    }

    /// The next member's key (with its `:` consumed), or `None` at the closing `}`. `first`
    /// says whether this is the first call for the object.
    pub(super) fn next_key(&mut self, first: bool) -> Result<Option<Cow<'b, str>>> {
        self.skip_whitespace();
        match self.bytes().get(self.pos) {
            Some(b'}') => {
                self.pos += 1;
                self.depth -= 1;
                return Ok(None);
            }
            Some(b',') if !first => {
                self.pos += 1;
                self.skip_whitespace();
            }
            Some(b'"') if first => {}
            None => return Err(self.error("EOF while parsing an object")),
            Some(_) if first => return Err(self.error("key must be a string")),
            Some(_) => return Err(self.error("expected `,` or `}`")),
        }
        if self.bytes().get(self.pos) != Some(&b'"') {
            return Err(self.error("key must be a string"));
        }
        let key = self.string()?;
        self.skip_whitespace();
        if self.bytes().get(self.pos) != Some(&b':') {
            return Err(self.error("expected `:`"));
        }
        self.pos += 1;
        Ok(Some(key))
    }

    /// Whether another element follows (its value not yet consumed); `false` at the closing
    /// `]`. `first` says whether this is the first call for the array.
    pub(super) fn next_element(&mut self, first: bool) -> Result<bool> {
        self.skip_whitespace();
        match self.bytes().get(self.pos) {
            Some(b']') => {
                self.pos += 1;
                self.depth -= 1;
                Ok(false)
            }
            Some(b',') if !first => {
                self.pos += 1;
                Ok(true)
            }
            None => Err(self.error("EOF while parsing a list")),
            Some(_) if first => Ok(true),
            Some(_) => Err(self.error("expected `,` or `]`")),
        }
    }

    /// Consumes the next value, whatever it is (an unknown field's).
    pub(super) fn skip(&mut self) -> Result<()> {
        match self.peek()? {
            Token::Null => self.null(),
            Token::Bool => self.boolean().map(drop),
            Token::Number => self.number().map(drop),
            Token::String => self.string().map(drop),
            Token::Array => {
                self.begin_array()?;
                let mut first = true;
                while self.next_element(first)? {
                    first = false;
                    self.skip()?;
                }
                Ok(())
            }
            Token::Object => {
                self.begin_object()?;
                let mut first = true;
                while self.next_key(first)?.is_some() {
                    first = false;
                    self.skip()?;
                }
                Ok(())
            }
        }
    }
}
