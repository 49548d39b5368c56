//! Go string-literal escapes in `probe_send` and `probe_recv`, which gobetween decodes with
//! `strconv.Unquote`.
//!
//! Decoded: `\a \b \f \n \r \t \v \\ \" \'`, `\xNN` (one byte), `\NNN` (three octal digits,
//! one byte), `\uNNNN` and `\UNNNNNNNN` (a character, as UTF-8). Unlike `strconv.Unquote`,
//! a raw newline or `"` in the text (a TOML `"\r\n"` arrives as real CR LF) is kept as is
//! instead of failing.

use std::fmt;

/// An escape sequence Go does not know, or a malformed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EscapeProblem {
    /// A `\` at the very end.
    Trailing,
    Unknown(char),
    /// `\x`, `\u`, `\U` or octal with too few or invalid digits.
    Malformed(String),
    /// An octal escape above `\377`, or a `\u` surrogate or out-of-range character.
    OutOfRange(String),
}

impl fmt::Display for EscapeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Trailing => f.write_str("it ends with a lone \\"),
            Self::Unknown(c) => write!(f, "unknown escape \\{c}"),
            Self::Malformed(escape) => write!(f, "malformed escape {escape}"),
            Self::OutOfRange(escape) => write!(f, "escape {escape} is out of range"),
        }?;
        f.write_str(r#" (Go escapes are \n \r \t \\ \" \xNN \NNN \uNNNN)"#)
    }
}

/// Decodes the Go escapes of `text` into bytes.
pub(super) fn decode(text: &str) -> Result<Vec<u8>, EscapeProblem> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buffer = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            continue;
        }
        let escape = chars.next().ok_or(EscapeProblem::Trailing)?;
        match escape {
            'x' => out.push(hex_byte(&mut chars)?),
            'u' => push_char(&mut out, &mut chars, 'u', 4)?,
            'U' => push_char(&mut out, &mut chars, 'U', 8)?,
            '0'..='7' => out.push(octal_byte(escape, &mut chars)?),
            _ => out.push(simple(escape).ok_or(EscapeProblem::Unknown(escape))?),
        }
    }
    Ok(out)
}

fn simple(escape: char) -> Option<u8> {
    Some(match escape {
        'a' => 0x07,
        'b' => 0x08,
        'f' => 0x0c,
        'n' => b'\n',
        'r' => b'\r',
        't' => b'\t',
        'v' => 0x0b,
        '\\' => b'\\',
        '"' => b'"',
        '\'' => b'\'',
        _ => return None,
    })
}

/// Takes `count` characters that must all be digits in `radix`; returns their value.
fn digits(
    chars: &mut std::str::Chars<'_>,
    count: usize,
    radix: u32,
    prefix: &str,
) -> Result<u32, EscapeProblem> {
    let taken: String = chars.by_ref().take(count).collect();
    let valid = taken.chars().count() == count && taken.chars().all(|c| c.is_digit(radix));
    if !valid {
        return Err(EscapeProblem::Malformed(format!("\\{prefix}{taken}")));
    }
    u32::from_str_radix(&taken, radix)
        .map_err(|_| EscapeProblem::Malformed(format!("\\{prefix}{taken}")))
}

fn hex_byte(chars: &mut std::str::Chars<'_>) -> Result<u8, EscapeProblem> {
    let value = digits(chars, 2, 16, "x")?;
    u8::try_from(value).map_err(|_| EscapeProblem::OutOfRange(format!("\\x{value:x}")))
}

fn octal_byte(first: char, chars: &mut std::str::Chars<'_>) -> Result<u8, EscapeProblem> {
    let rest = digits(chars, 2, 8, &first.to_string())?;
    let value = first.to_digit(8).unwrap_or(0) * 64 + rest;
    u8::try_from(value).map_err(|_| EscapeProblem::OutOfRange(format!("\\{value:o}")))
}

fn push_char(
    out: &mut Vec<u8>,
    chars: &mut std::str::Chars<'_>,
    letter: char,
    count: usize,
) -> Result<(), EscapeProblem> {
    let value = digits(chars, count, 16, &letter.to_string())?;
    let c = char::from_u32(value)
        .ok_or_else(|| EscapeProblem::OutOfRange(format!("\\{letter}{value:0count$x}")))?;
    let mut buffer = [0; 4];
    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_go_escapes() {
        let table: &[(&str, &[u8])] = &[
            ("PING\\r\\n", b"PING\r\n"),
            ("a\\tb\\\\c\\\"d\\'e", b"a\tb\\c\"d'e"),
            ("\\a\\b\\f\\v", b"\x07\x08\x0c\x0b"),
            ("\\x00\\xff\\xAB", b"\x00\xff\xab"),
            ("\\000\\101\\377", b"\x00A\xff"),
            ("\\u00e9", "é".as_bytes()),
            ("\\U0001F600", "😀".as_bytes()),
            ("é", "é".as_bytes()),
            ("raw\r\n\"", b"raw\r\n\""),
            ("", b""),
        ];
        for (text, expected) in table {
            assert_eq!(decode(text).as_deref(), Ok(*expected), "{text}");
        }
    }

    #[test]
    fn refuses_bad_escapes() {
        let table = [
            ("x\\", EscapeProblem::Trailing),
            ("\\q", EscapeProblem::Unknown('q')),
            ("\\x4", EscapeProblem::Malformed("\\x4".into())),
            ("\\xg0", EscapeProblem::Malformed("\\xg0".into())),
            ("\\12", EscapeProblem::Malformed("\\12".into())),
            ("\\18x", EscapeProblem::Malformed("\\18x".into())),
            ("\\400", EscapeProblem::OutOfRange("\\400".into())),
            ("\\ud800", EscapeProblem::OutOfRange("\\ud800".into())),
            (
                "\\U00110000",
                EscapeProblem::OutOfRange("\\U00110000".into()),
            ),
        ];
        for (text, problem) in table {
            assert_eq!(decode(text), Err(problem), "{text}");
        }
        let message = decode("\\q").expect_err("bad").to_string();
        assert!(message.contains("unknown escape \\q"), "{message}");
    }
}
