//! Finding the entries of a batch body as it arrives: the elements of a JSON
//! array, or the lines of NDJSON.
//!
//! `serde_json::StreamDeserializer` reads a sequence of whole values, not the
//! elements of one array, and the incremental JSON crates either buffer the
//! document or hand out tokens (we would rebuild every object from them). So
//! the array is split here by a small scanner that only tracks what decides
//! where an element ends: strings (and their escapes) and the nesting depth.
//! Each element is then parsed by serde_json, which judges its syntax; the
//! scanner judges only the array around the elements.

use std::fmt;

/// How the entries of a batch are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON array of objects.
    Array,
    /// One JSON object per line (NDJSON); blank lines are skipped.
    Lines,
}

/// One entry found.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// The entry's bytes (a JSON value to be parsed).
    Entry(Vec<u8>),
    /// An entry longer than the limit, of this many bytes, not kept.
    TooLarge(usize),
}

/// The body is not a JSON array of entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `[`.
    Start,
    /// After `[`: an entry or `]`.
    First,
    /// After `,`: an entry.
    Next,
    /// Inside an entry.
    Entry,
    /// After the closing `]` (or for lines: never).
    Done,
}

/// Splits a body into entries, fed chunk by chunk; holds only the bytes of
/// the entry being read, and at most `limit` of them.
#[derive(Debug)]
pub struct Splitter {
    framing: Framing,
    limit: usize,
    state: State,
    buf: Vec<u8>,
    /// The length so far of an entry over the limit (its bytes dropped).
    over: Option<usize>,
    depth: usize,
    in_string: bool,
    escape: bool,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Splitter {
    /// A splitter for `framing` whose entries may be `limit` bytes long.
    pub fn new(framing: Framing, limit: usize) -> Self {
        Self {
            framing,
            limit,
            state: match framing {
                Framing::Array => State::Start,
                Framing::Lines => State::Entry,
            },
            buf: Vec::new(),
            over: None,
            depth: 0,
            in_string: false,
            escape: false,
        }
    }

    /// The bytes held (of the entry not yet complete).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Reads `data`, appending the entries it completes to `out`. After an
    /// error the splitter is spent; the entries before it are in `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Item>) -> Result<(), Malformed> {
        match self.framing {
            Framing::Array => self.push_array(data, out),
            Framing::Lines => {
                self.push_lines(data, out);
                Ok(())
            }
        }
    }

    /// The end of the body: the last entry of NDJSON (a final newline is
    /// optional); for an array, an error unless it was closed.
    pub fn finish(&mut self, out: &mut Vec<Item>) -> Result<(), Malformed> {
        match (self.framing, self.state) {
            (Framing::Lines, _) => {
                self.end_line(out);
                Ok(())
            }
            (Framing::Array, State::Done) => Ok(()),
            (Framing::Array, State::Start) => Err(Malformed("the body is not a JSON array")),
            (Framing::Array, _) => Err(Malformed(
                "the JSON array is truncated: the body ended before its closing ]",
            )),
        }
    }

    /// Appends `bytes` to the entry, or counts them once it is over the limit.
    fn keep(&mut self, bytes: &[u8]) {
        if let Some(n) = &mut self.over {
            *n += bytes.len();
        } else if self.buf.len() + bytes.len() > self.limit {
            self.over = Some(self.buf.len() + bytes.len());
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn emit(&mut self, out: &mut Vec<Item>) {
        let item = match self.over.take() {
            Some(n) => Item::TooLarge(n),
            None => Item::Entry(std::mem::take(&mut self.buf)),
        };
        out.push(item);
    }

    fn push_lines(&mut self, data: &[u8], out: &mut Vec<Item>) {
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.keep(&rest[..end]);
            self.end_line(out);
            rest = &rest[end + 1..];
        }
        self.keep(rest);
    }

    /// Ends the line held: an entry unless it is blank.
    fn end_line(&mut self, out: &mut Vec<Item>) {
        if self.over.is_none() && self.buf.iter().all(|&b| is_space(b)) {
            self.buf.clear();
            return;
        }
        self.emit(out);
    }

    fn push_array(&mut self, data: &[u8], out: &mut Vec<Item>) -> Result<(), Malformed> {
        // Where the part of the current entry inside `data` began.
        let mut start = 0;
        for (i, &b) in data.iter().enumerate() {
            match self.state {
                State::Start | State::First | State::Next | State::Done if is_space(b) => {}
                State::Start if b == b'[' => self.state = State::First,
                State::Start => return Err(Malformed("the body is not a JSON array")),
                State::First if b == b']' => self.state = State::Done,
                State::Next if b == b']' => {
                    return Err(Malformed("the JSON array has a trailing comma"))
                }
                State::First | State::Next if b == b',' => {
                    return Err(Malformed("the JSON array has an empty entry"))
                }
                State::First | State::Next => {
                    self.state = State::Entry;
                    start = i;
                    self.scan(b);
                }
                State::Done => return Err(Malformed("there is data after the JSON array")),
                State::Entry if self.depth == 0 && !self.in_string && (b == b',' || b == b']') => {
                    self.keep(&data[start..i]);
                    self.emit(out);
                    self.state = if b == b',' { State::Next } else { State::Done };
                }
                State::Entry => self.scan(b),
            }
        }
        if self.state == State::Entry {
            self.keep(&data[start..]);
        }
        Ok(())
    }

    /// Follows strings and nesting inside an entry.
    fn scan(&mut self, b: u8) {
        if self.in_string {
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            // A stray closer is left to serde_json to refuse.
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(items: Vec<Item>) -> Vec<String> {
        items
            .into_iter()
            .map(|i| match i {
                Item::Entry(b) => String::from_utf8(b).unwrap(),
                Item::TooLarge(n) => format!("<too large: {n}>"),
            })
            .collect()
    }

    /// Splits `body` fed in chunks of `chunk` bytes.
    fn split(framing: Framing, body: &str, chunk: usize) -> Result<Vec<String>, Malformed> {
        let mut s = Splitter::new(framing, 64);
        let mut out = Vec::new();
        for part in body.as_bytes().chunks(chunk.max(1)) {
            s.push(part, &mut out)?;
        }
        s.finish(&mut out)?;
        Ok(entries(out))
    }

    /// The same answer whatever the chunking.
    fn array(body: &str) -> Result<Vec<String>, Malformed> {
        let whole = split(Framing::Array, body, body.len());
        for chunk in 1..=body.len().min(9) {
            assert_eq!(split(Framing::Array, body, chunk), whole, "chunk {chunk}");
        }
        whole
    }

    #[test]
    fn elements_of_an_array() {
        assert_eq!(
            array(r#"[{"a":1},{"b":2}]"#).unwrap(),
            [r#"{"a":1}"#, r#"{"b":2}"#]
        );
        assert_eq!(array("[]").unwrap(), Vec::<String>::new());
        assert_eq!(array(" \n[ \t]\r\n").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn whitespace_around_elements() {
        assert_eq!(
            array("\n[\n  {\"a\": 1} ,\n\t{\"b\": 2}\n]\n").unwrap(),
            ["{\"a\": 1} ", "{\"b\": 2}\n"]
        );
    }

    #[test]
    fn strings_with_brackets_commas_and_escaped_quotes() {
        assert_eq!(
            array(r#"[{"s":"],[{}"},{"t":"a\"],\\"},{"u":"\\\""}]"#).unwrap(),
            [r#"{"s":"],[{}"}"#, r#"{"t":"a\"],\\"}"#, r#"{"u":"\\\""}"#]
        );
    }

    #[test]
    fn nested_objects_and_arrays() {
        assert_eq!(
            array(r#"[{"h":{"l":[1,[2,{"x":[]}]]}},{"b":[{},{}]}]"#).unwrap(),
            [r#"{"h":{"l":[1,[2,{"x":[]}]]}}"#, r#"{"b":[{},{}]}"#]
        );
    }

    #[test]
    fn scalars_are_entries_for_serde_to_refuse() {
        assert_eq!(array(r#"[1, "x", null]"#).unwrap(), ["1", "\"x\"", "null"]);
    }

    #[test]
    fn framing_errors() {
        let not = Malformed("the body is not a JSON array");
        assert_eq!(array(r#"{"a":1}"#), Err(not.clone()));
        assert_eq!(array(""), Err(not.clone()));
        assert_eq!(array("  "), Err(not));
        for truncated in ["[", r#"[{"a":1}"#, r#"[{"a":1},"#, r#"[{"a":"]"#] {
            assert_eq!(
                array(truncated),
                Err(Malformed(
                    "the JSON array is truncated: the body ended before its closing ]"
                )),
                "{truncated}"
            );
        }
        assert!(array("[{},]").is_err());
        assert!(array("[,{}]").is_err());
        assert!(array("[{}] x").is_err());
    }

    #[test]
    fn entries_before_an_error_are_kept() {
        let mut s = Splitter::new(Framing::Array, 64);
        let mut out = Vec::new();
        assert!(s.push(b"[{}, {\"a\":1}] [", &mut out).is_err());
        assert_eq!(entries(out), ["{}", "{\"a\":1}"]);
    }

    #[test]
    fn an_entry_over_the_limit_is_counted_not_kept() {
        let big = format!(r#"{{"b":"{}"}}"#, "x".repeat(100));
        let body = format!(r#"[{{"a":1}},{big},{{"c":3}}]"#);
        for chunk in [1, 7, body.len()] {
            let mut s = Splitter::new(Framing::Array, 64);
            let mut out = Vec::new();
            for part in body.as_bytes().chunks(chunk) {
                s.push(part, &mut out).unwrap();
                assert!(s.buffered() <= 64);
            }
            s.finish(&mut out).unwrap();
            assert_eq!(
                out,
                [
                    Item::Entry(br#"{"a":1}"#.to_vec()),
                    Item::TooLarge(big.len()),
                    Item::Entry(br#"{"c":3}"#.to_vec()),
                ]
            );
        }
    }

    #[test]
    fn lines() {
        let body = "{\"a\":1}\n\n  \r\n{\"b\":\"[\"}\r\nnot json\n{\"c\":3}";
        for chunk in 1..=body.len() {
            assert_eq!(
                split(Framing::Lines, body, chunk).unwrap(),
                ["{\"a\":1}", "{\"b\":\"[\"}\r", "not json", "{\"c\":3}"],
                "chunk {chunk}"
            );
        }
        assert_eq!(split(Framing::Lines, "", 1).unwrap(), Vec::<String>::new());
        assert_eq!(
            split(Framing::Lines, "{}\n", 1).unwrap(),
            vec!["{}".to_string()]
        );
        let long = format!("{{}}\n{}\n{{}}\n", "x".repeat(100));
        assert_eq!(
            split(Framing::Lines, &long, 5).unwrap(),
            ["{}", "<too large: 100>", "{}"]
        );
    }
}
