//! The configuration's one error type, and how a toml error becomes one.
//!
//! An operator who mistyped a key wants three things from the message: which key (as a
//! dotted path, `target.port`, `volume[1].size`), what they wrote, and what would have
//! been accepted. Validation knows all three. A toml/serde error knows only a byte span
//! and a message, so [`from_toml`] finds the key at that span by reading the table
//! headers and `key =` lines around it (see [`key_path_at`]); and the value types of
//! this crate (sizes, keywords, addresses) encode their value and the accepted forms in
//! the serde message so that they come out in the same `key = value: expected …` form
//! as validation errors.

use std::fmt;
use std::path::PathBuf;

/// Marks a serde message produced by [`value_error_message`]; never shown.
const VALUE_MARK: &str = "\u{1}quire-value\u{1}";
/// Separates the value from the expectation inside such a message.
const VALUE_SEP: char = '\u{1f}';

/// Errors reading, parsing or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a missing key or a value of the wrong type.
    #[error("{}{message} ({at})", KeyPrefix(key))]
    Parse {
        /// Dotted path of the key, when the error could be placed on one.
        key: Option<String>,
        /// The parser's message.
        message: String,
        /// Where in the file.
        at: Location,
    },
    /// A value outside what is allowed.
    #[error("{key} = {value}: expected {expected}{}", LocationSuffix(at))]
    Invalid {
        /// Dotted path of the key (or the CLI flag).
        key: String,
        /// The value as written (strings quoted).
        value: String,
        /// What is allowed.
        expected: String,
        /// Where in the file, when known (parse-time checks know it, validation does not).
        at: Option<Location>,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] without a location.
    pub fn invalid(key: impl Into<String>, value: impl fmt::Display, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { key: key.into(), value: value.to_string(), expected: expected.into(), at: None }
    }

    /// The dotted key path the error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

/// A 1-based line and column in the config text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

struct KeyPrefix<'a>(&'a Option<String>);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, "{key}: "),
            None => Ok(()),
        }
    }
}

struct LocationSuffix<'a>(&'a Option<Location>);

impl fmt::Display for LocationSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(at) => write!(f, " ({at})"),
            None => Ok(()),
        }
    }
}

/// The serde message a value type of this crate returns for a bad value; [`from_toml`]
/// turns it back into [`ConfigError::Invalid`] with the key and location.
pub(crate) fn value_error_message(value: &str, expected: &str) -> String {
    assert!(!value.contains(VALUE_SEP));
    format!("{VALUE_MARK}{value}{VALUE_SEP}{expected}")
}

/// Converts a toml error on `source` into a [`ConfigError`] naming the key.
pub(crate) fn from_toml(source: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start).min(source.len());
    let at = location_at(source, offset);
    let key = key_path_at(source, offset);
    let message = error.message().trim();
    if let Some((value, expected)) = message.strip_prefix(VALUE_MARK).and_then(|rest| rest.split_once(VALUE_SEP)) {
        return ConfigError::Invalid {
            key: key.unwrap_or_else(|| "?".to_string()),
            value: value.to_string(),
            expected: expected.to_string(),
            at: Some(at),
        };
    }
    let message = message.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(": ");
    ConfigError::Parse { key, message, at }
}

/// Line and column of byte `offset`.
fn location_at(source: &str, offset: usize) -> Location {
    let offset = floor_char_boundary(source, offset);
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Location { line, column }
}

fn floor_char_boundary(source: &str, mut offset: usize) -> usize {
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The dotted path of the key whose value is at byte `offset`: the nearest `key =`
/// line at or above it (a value may span lines), under the nearest table header above
/// that; an array-of-tables header gets its index (`volume[1]`). A header line itself
/// yields the header's path. This reads the text as TOML is written in practice
/// (one key per line) and gives up (`None`) rather than guess on anything else.
pub(crate) fn key_path_at(source: &str, offset: usize) -> Option<String> {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[offset..].find('\n').map_or(source.len(), |i| offset + i);
    let lines: Vec<&str> = source[..line_end].lines().collect();
    assert!(!lines.is_empty() || line_start == 0);
    let mut key: Option<String> = None;
    let mut header_line = None;
    for (index, line) in lines.iter().enumerate().rev() {
        let line = strip_comment(line);
        if header(line).is_some() {
            header_line = Some(index);
            break;
        }
        if key.is_none() {
            key = assignment_key(line);
        }
    }
    let table = header_line.map(|index| table_path(&lines[..=index]));
    match (table, key) {
        (Some(table), Some(key)) => Some(format!("{table}.{key}")),
        (Some(table), None) => Some(table),
        (None, Some(key)) => Some(key),
        (None, None) => None,
    }
}

/// The path of the header on the last of `lines`, with an index for arrays of tables.
fn table_path(lines: &[&str]) -> String {
    let last = lines.last().map(|line| strip_comment(line)).and_then(header);
    let Some((name, is_array)) = last else {
        unreachable!("table_path is called on a header line");
    };
    if !is_array {
        return name;
    }
    let count = lines.iter().filter_map(|line| header(strip_comment(line))).filter(|(n, a)| *a && *n == name).count();
    assert!(count >= 1);
    format!("{name}[{}]", count - 1)
}

/// `[name]` → (name, false); `[[name]]` → (name, true).
fn header(line: &str) -> Option<(String, bool)> {
    let line = line.trim();
    if let Some(inner) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
        return Some((unquote_path(inner), true));
    }
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    Some((unquote_path(inner), false))
}

/// `key = value` → `key` (bare, quoted or dotted).
fn assignment_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let simple = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'' | ' ');
    if key.is_empty() || !key.chars().all(simple) {
        return None;
    }
    Some(unquote_path(key))
}

fn unquote_path(path: &str) -> String {
    path.split('.').map(|part| part.trim().trim_matches(['"', '\''])).collect::<Vec<_>>().join(".")
}

/// The line without a trailing `# comment` (a `#` inside a string is rare in this
/// schema; a wrong cut only costs the key name in an error message).
fn strip_comment(line: &str) -> &str {
    match line.find('#') {
        Some(i) if !line[..i].contains('"') || line[..i].matches('"').count().is_multiple_of(2) => &line[..i],
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_at(source: &str, needle: &str) -> Option<String> {
        key_path_at(source, source.find(needle).unwrap())
    }

    #[test]
    fn key_in_a_table() {
        let source = "[peer]\nname = \"a\"\n[target]\nport = 0\n";
        assert_eq!(path_at(source, "0").as_deref(), Some("target.port"));
        assert_eq!(path_at(source, "\"a\"").as_deref(), Some("peer.name"));
    }

    #[test]
    fn key_at_top_level_and_header_itself() {
        assert_eq!(path_at("foo = 1\n[peer]\n", "1").as_deref(), Some("foo"));
        assert_eq!(path_at("[peer]\n[bogus]\nx = 1\n", "bogus").as_deref(), Some("bogus"));
    }

    #[test]
    fn arrays_of_tables_get_their_index() {
        let source = "[[volume]]\nname = \"a\"\n[[device]]\nkind = \"ram\"\n[[volume]]\nname = \"b\"\nsize = \"x\"\n";
        assert_eq!(path_at(source, "\"x\"").as_deref(), Some("volume[1].size"));
        assert_eq!(path_at(source, "\"ram\"").as_deref(), Some("device[0].kind"));
    }

    #[test]
    fn multi_line_value_and_comments() {
        let source = "[[volume]] # first\nallowed_hosts = [\n  \"nqn.a\",\n  5,\n]\n";
        assert_eq!(path_at(source, "5").as_deref(), Some("volume[0].allowed_hosts"));
    }

    #[test]
    fn location_counts_lines_and_characters() {
        let source = "a = 1\nbé = 2\n";
        let offset = source.find('2').unwrap();
        assert_eq!(location_at(source, offset), Location { line: 2, column: 6 });
    }

    #[test]
    fn value_messages_round_trip_into_invalid() {
        let message = value_error_message("\"fast\"", "\"busy\" or \"hybrid\"");
        assert!(message.starts_with(VALUE_MARK));
        let rest = message.strip_prefix(VALUE_MARK).unwrap();
        assert_eq!(rest.split_once(VALUE_SEP), Some(("\"fast\"", "\"busy\" or \"hybrid\"")));
    }
}
