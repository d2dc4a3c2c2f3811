//! Tokens of the text form, each with its line and column.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};

use super::ast::{Span, Unit};

/// A token.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A name or keyword: `[A-Za-z_][A-Za-z0-9_]*`.
    Ident(String),
    /// A double-quoted string, unescaped.
    Str(String),
    /// A number.
    Num(f64),
    /// A date: `2024-01-31`.
    Date(NaiveDate),
    /// An RFC 3339 instant: `2024-01-31T10:00:00Z`.
    Time(DateTime<Utc>),
    /// A span: `12h`, `30d`, `2w`, `3mo`.
    Span(Span),
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
    /// `.`
    Dot,
    /// `:`
    Colon,
    /// `=`
    Eq,
    /// `!=`
    Neq,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `*` (any event type)
    Star,
    /// `|` (between event types)
    Pipe,
    /// End of input.
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Date(d) => write!(f, "date {d}"),
            Tok::Time(t) => write!(f, "time {}", t.to_rfc3339()),
            Tok::Span(_) => f.write_str("a span"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Dot => f.write_str("`.`"),
            Tok::Colon => f.write_str("`:`"),
            Tok::Eq => f.write_str("`=`"),
            Tok::Neq => f.write_str("`!=`"),
            Tok::Gt => f.write_str("`>`"),
            Tok::Gte => f.write_str("`>=`"),
            Tok::Lt => f.write_str("`<`"),
            Tok::Lte => f.write_str("`<=`"),
            Tok::Star => f.write_str("`*`"),
            Tok::Pipe => f.write_str("`|`"),
            Tok::Eof => f.write_str("end of input"),
        }
    }
}

/// A token and where it starts (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub col: u32,
}

/// A syntax error: where, what was expected, what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub col: u32,
    /// What would have been valid here.
    pub expected: String,
    /// What was there.
    pub found: String,
}

impl std::error::Error for SyntaxError {}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: expected {}, found {}",
            self.line, self.col, self.expected, self.found
        )
    }
}

/// Longest accepted text definition, in bytes.
pub const MAX_TEXT: usize = 64 * 1024;

/// Splits `src` into tokens, ending with `Eof`.
///
/// # Errors
/// An unterminated string, a bad escape, an invalid literal or a stray character.
pub fn lex(src: &str) -> Result<Vec<Token>, SyntaxError> {
    if src.len() > MAX_TEXT {
        return Err(SyntaxError {
            line: 1,
            col: 1,
            expected: format!("at most {MAX_TEXT} bytes"),
            found: format!("{} bytes", src.len()),
        });
    }
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1u32, 1u32);
    let err = |line, col, expected: &str, found: String| SyntaxError {
        line,
        col,
        expected: expected.to_string(),
        found,
    };
    while i < chars.len() {
        let c = chars[i];
        let (tl, tc) = (line, col);
        let advance = |n: usize, i: &mut usize, col: &mut u32| {
            *i += n;
            *col += n as u32;
        };
        if c == '\n' {
            i += 1;
            line += 1;
            col = 1;
            continue;
        }
        if c.is_whitespace() {
            advance(1, &mut i, &mut col);
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let punct = match two.as_str() {
            "!=" => Some((Tok::Neq, 2)),
            ">=" => Some((Tok::Gte, 2)),
            "<=" => Some((Tok::Lte, 2)),
            _ => match c {
                '(' => Some((Tok::LParen, 1)),
                ')' => Some((Tok::RParen, 1)),
                ',' => Some((Tok::Comma, 1)),
                '.' => Some((Tok::Dot, 1)),
                ':' => Some((Tok::Colon, 1)),
                '=' => Some((Tok::Eq, 1)),
                '>' => Some((Tok::Gt, 1)),
                '<' => Some((Tok::Lt, 1)),
                '*' => Some((Tok::Star, 1)),
                '|' => Some((Tok::Pipe, 1)),
                _ => None,
            },
        };
        if let Some((tok, n)) = punct {
            out.push(Token {
                tok,
                line: tl,
                col: tc,
            });
            advance(n, &mut i, &mut col);
            continue;
        }
        if c == '"' {
            let mut s = String::new();
            let mut j = i + 1;
            loop {
                let Some(&d) = chars.get(j) else {
                    return Err(err(tl, tc, "a closing `\"`", "end of input".into()));
                };
                match d {
                    '"' => break,
                    '\n' => {
                        return Err(err(
                            tl,
                            tc,
                            "a closing `\"` on the same line",
                            "a line break".into(),
                        ));
                    }
                    '\\' => {
                        let e = chars.get(j + 1).copied();
                        let (ch, used) = match e {
                            Some('"') => ('"', 2),
                            Some('\\') => ('\\', 2),
                            Some('n') => ('\n', 2),
                            Some('t') => ('\t', 2),
                            Some('r') => ('\r', 2),
                            Some('u') if chars.get(j + 2) == Some(&'{') => {
                                let close = chars[j + 3..].iter().position(|&x| x == '}');
                                let hex: Option<String> =
                                    close.map(|p| chars[j + 3..j + 3 + p].iter().collect());
                                let ch = hex
                                    .as_deref()
                                    .filter(|h| (1..=6).contains(&h.len()))
                                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                                    .and_then(char::from_u32);
                                match (ch, close) {
                                    (Some(ch), Some(p)) => (ch, 4 + p),
                                    _ => {
                                        let at = tc + (j - i) as u32;
                                        return Err(err(
                                            tl,
                                            at,
                                            "a unicode escape like \\u{e9}",
                                            "a bad escape".into(),
                                        ));
                                    }
                                }
                            }
                            other => {
                                let at = tc + (j - i) as u32;
                                let found =
                                    other.map_or("end of input".into(), |o| format!("`\\{o}`"));
                                return Err(err(
                                    tl,
                                    at,
                                    "an escape (\\\" \\\\ \\n \\t \\r \\u{...})",
                                    found,
                                ));
                            }
                        };
                        s.push(ch);
                        j += used;
                        continue;
                    }
                    d => s.push(d),
                }
                j += 1;
            }
            out.push(Token {
                tok: Tok::Str(s),
                line: tl,
                col: tc,
            });
            advance(j + 1 - i, &mut i, &mut col);
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let n = chars[i..]
                .iter()
                .take_while(|x| x.is_ascii_alphanumeric() || **x == '_')
                .count();
            let word: String = chars[i..i + n].iter().collect();
            out.push(Token {
                tok: Tok::Ident(word),
                line: tl,
                col: tc,
            });
            advance(n, &mut i, &mut col);
            continue;
        }
        let starts_literal =
            c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if starts_literal {
            let n = 1 + chars[i + 1..]
                .iter()
                .take_while(|x| x.is_ascii_alphanumeric() || matches!(x, '.' | ':' | '+' | '-'))
                .count();
            let word: String = chars[i..i + n].iter().collect();
            let tok = literal(&word).ok_or_else(|| {
                err(
                    tl,
                    tc,
                    "a number, a date (2024-01-31), a time (2024-01-31T10:00:00Z) or a span (30d)",
                    format!("`{word}`"),
                )
            })?;
            out.push(Token {
                tok,
                line: tl,
                col: tc,
            });
            advance(n, &mut i, &mut col);
            continue;
        }
        return Err(err(
            tl,
            tc,
            "a condition, operator or value",
            format!("`{c}`"),
        ));
    }
    out.push(Token {
        tok: Tok::Eof,
        line,
        col,
    });
    Ok(out)
}

fn literal(w: &str) -> Option<Tok> {
    let digits = w.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 && digits < w.len() {
        let unit = match &w[digits..] {
            "h" => Some(Unit::Hours),
            "d" => Some(Unit::Days),
            "w" => Some(Unit::Weeks),
            "mo" => Some(Unit::Months),
            _ => None,
        };
        if let Some(unit) = unit {
            let amount = w[..digits].parse().ok()?;
            return Some(Tok::Span(Span { amount, unit }));
        }
    }
    if w.len() == 10 && w.as_bytes()[4] == b'-' {
        return NaiveDate::parse_from_str(w, "%Y-%m-%d").ok().map(Tok::Date);
    }
    if w.contains('T') {
        return DateTime::parse_from_rfc3339(w)
            .ok()
            .map(|t| Tok::Time(t.with_timezone(&Utc)));
    }
    let n: f64 = w.parse().ok()?;
    n.is_finite().then_some(Tok::Num(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn literals() {
        assert_eq!(
            toks(r#"age >= -2.5 30d 3mo 2024-02-29 "a\"\u{e9}""#),
            vec![
                Tok::Ident("age".into()),
                Tok::Gte,
                Tok::Num(-2.5),
                Tok::Span(Span {
                    amount: 30,
                    unit: Unit::Days
                }),
                Tok::Span(Span {
                    amount: 3,
                    unit: Unit::Months
                }),
                Tok::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
                Tok::Str("a\"é".into()),
                Tok::Eof
            ]
        );
        assert!(matches!(toks("2024-01-01T10:00:00+01:00")[0], Tok::Time(_)));
    }

    #[test]
    fn errors_have_positions() {
        let e = lex("a = 1\n  b = \"open").unwrap_err();
        assert_eq!((e.line, e.col), (2, 7));
        let e = lex("x = 12zz").unwrap_err();
        assert_eq!((e.line, e.col), (1, 5));
        let e = lex("x ; y").unwrap_err();
        assert_eq!((e.line, e.col, e.found.as_str()), (1, 3, "`;`"));
    }
}
