//! Finding, reading and validating the config file, with every error located at
//! `file:line:column`.
//!
//! serde stops at the first error, but an operator fixing a file wants all of them at once.
//! So the file is deserialised repeatedly from its value tree: each failure is located (via
//! its key path, looked up in the span-preserving parse of the original text), the offending
//! key is removed so its default applies, and deserialisation is tried again. The semantic
//! checks of [`Config::validate`] then run on the result and are located the same way.

use std::fmt;
use std::path::{Path, PathBuf};

use toml_edit::{Document, Item, Value as EditValue};
use vigil_actors::config::Config;

/// Where the config comes from (CONTRACT §2 lookup order).
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File(PathBuf),
    BuiltIn,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => write!(f, "built-in defaults"),
        }
    }
}

/// `--config`, else `$VIGIL_CONFIG`, else `/etc/vigil/vigil.toml` if it exists, else defaults.
pub fn lookup(cli: Option<&Path>) -> Source {
    if let Some(p) = cli {
        return Source::File(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("VIGIL_CONFIG").filter(|v| !v.is_empty()) {
        return Source::File(PathBuf::from(p));
    }
    let etc = Path::new("/etc/vigil/vigil.toml");
    if etc.exists() {
        return Source::File(etc.to_path_buf());
    }
    Source::BuiltIn
}

/// One problem, with its position when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Why a config could not be used.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Read { path: PathBuf, source: std::io::Error },
    /// The file was read and is invalid; every problem found.
    Invalid { source: Source, errors: Vec<ConfigError> },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, source } => write!(f, "{}: cannot read config: {source}", path.display()),
            LoadError::Invalid { source, errors } => {
                write!(
                    f,
                    "{source}: invalid configuration ({} error{})",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                )?;
                for e in errors {
                    write!(f, "\n  {source}")?;
                    if let (Some(l), Some(c)) = (e.line, e.column) {
                        write!(f, ":{l}:{c}")?;
                    }
                    write!(f, ": {}", e.message)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads and validates the config from `source`.
/// The lookup and load every command starts with: on a configuration error, prints every
/// problem to stderr and gives the exit code for it (78).
pub fn load_or_exit(cli: Option<&Path>) -> Result<(Source, Config), std::process::ExitCode> {
    let source = lookup(cli);
    match load(&source) {
        Ok(c) => Ok((source, c)),
        Err(e) => {
            eprintln!("{e}");
            Err(std::process::ExitCode::from(crate::EXIT_CONFIG))
        }
    }
}

pub fn load(source: &Source) -> Result<Config, LoadError> {
    match source {
        Source::BuiltIn => {
            let config = Config::default();
            debug_assert!(config.validate().is_empty());
            Ok(config)
        }
        Source::File(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LoadError::Read { path: path.clone(), source: e })?;
            parse(&text).map_err(|errors| LoadError::Invalid { source: source.clone(), errors })
        }
    }
}

/// Parses and validates config text; every error found, sorted by position.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let doc = match Document::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unzip();
            return Err(vec![ConfigError { line, column, message: one_line(e.message()) }]);
        }
    };
    let mut tree: toml::Value = match toml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unzip();
            return Err(vec![ConfigError { line, column, message: one_line(e.message()) }]);
        }
    };
    let mut errors = Vec::new();
    let mut config = None;
    // Each round removes one offending key; a file cannot have more keys than bytes.
    for _ in 0..=text.len().min(10_000) {
        match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(c) => {
                config = Some(c);
                break;
            }
            Err(e) => {
                let mut path = segments(e.path());
                let message = one_line(&e.inner().to_string());
                if let Some(field) = unknown_field(&message) {
                    if path.last() != Some(&Segment::Key(field.to_string())) {
                        path.push(Segment::Key(field.to_string()));
                    }
                }
                let (line, column) = locate(text, &doc, &path).unzip();
                let shown = display_path(&path);
                errors.push(ConfigError {
                    line,
                    column,
                    message: if shown.is_empty() { message } else { format!("`{shown}`: {message}") },
                });
                if !remove(&mut tree, &path) {
                    break;
                }
            }
        }
    }
    if let Some(c) = &config {
        for p in c.validate() {
            let path: Vec<Segment> = p
                .path
                .split('.')
                .map(|k| k.parse().map(Segment::Index).unwrap_or_else(|_| Segment::Key(k.to_string())))
                .collect();
            let (line, column) = locate(text, &doc, &path).unzip();
            errors.push(ConfigError { line, column, message: format!("`{}`: {}", p.path, p.message) });
        }
    }
    if errors.is_empty() {
        if let Some(c) = config {
            return Ok(c);
        }
    }
    errors.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.column.unwrap_or(0)));
    Err(errors)
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|s| match s {
            S::Map { key } => Some(Segment::Key(key.clone())),
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Enum { variant } => Some(Segment::Key(variant.clone())),
            S::Unknown => None,
        })
        .collect()
}

fn display_path(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// `unknown field `x`, expected ...` → `x`.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(f, _)| f)
}

/// Removes the value at `path`; false when there was nothing to remove.
fn remove(tree: &mut toml::Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut cur = tree;
    for seg in parents {
        cur = match (seg, cur) {
            (Segment::Key(k), toml::Value::Table(t)) => match t.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Index(i), toml::Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Segment::Key(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        (Segment::Index(i), toml::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

/// Line and column of the key (or, failing that, the deepest enclosing item) at `path`.
fn locate(text: &str, doc: &Document<&str>, path: &[Segment]) -> Option<(usize, usize)> {
    let mut best: Option<std::ops::Range<usize>> = None;
    let mut item: Option<Node> = Some(Node::Item(doc.as_item()));
    for seg in path {
        let Some(cur) = item.take() else { break };
        item = match (seg, cur) {
            (Segment::Key(k), Node::Item(Item::Table(t))) => t.get_key_value(k).map(|(key, v)| {
                best = key.span().or_else(|| v.span()).or(best.clone());
                Node::Item(v)
            }),
            (Segment::Key(k), Node::Item(Item::Value(EditValue::InlineTable(t))))
            | (Segment::Key(k), Node::Value(EditValue::InlineTable(t))) => {
                t.get_key_value(k).map(|(key, v)| {
                    best = key.span().or_else(|| v.span()).or(best.clone());
                    Node::Item(v)
                })
            }
            (Segment::Index(i), Node::Item(Item::ArrayOfTables(a))) => a.get(*i).map(|t| {
                best = t.span().or(best.clone());
                Node::Table(t)
            }),
            (Segment::Key(k), Node::Table(t)) => t.get_key_value(k).map(|(key, v)| {
                best = key.span().or_else(|| v.span()).or(best.clone());
                Node::Item(v)
            }),
            (Segment::Index(i), Node::Item(Item::Value(EditValue::Array(a))))
            | (Segment::Index(i), Node::Value(EditValue::Array(a))) => a.get(*i).map(|v| {
                best = v.span().or(best.clone());
                Node::Value(v)
            }),
            _ => None,
        };
    }
    best.map(|r| line_col(text, r.start))
}

enum Node<'a> {
    Item(&'a Item),
    Value(&'a EditValue),
    Table(&'a toml_edit::Table),
}

/// Parser messages may span lines; an error list wants one line per error.
fn one_line(message: &str) -> String {
    message.trim().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// The data directory: `--data-dir`, else `agent.data_dir`, else /var/lib/vigil as root,
/// else `$XDG_STATE_HOME/vigil` or `~/.local/state/vigil`.
pub fn data_dir(cli: Option<&Path>, config: &Config) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    if !config.agent.data_dir.is_empty() {
        return PathBuf::from(&config.agent.data_dir);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/vigil");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("vigil");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/state/vigil"),
        None => PathBuf::from("/var/lib/vigil"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .into_iter()
            .map(|e| format!("{}:{}: {}", e.line.unwrap_or(0), e.column.unwrap_or(0), e.message))
            .collect()
    }

    #[test]
    fn the_shipped_config_states_exactly_the_built_in_defaults() {
        let shipped = include_str!("../config/vigil.toml");
        assert_eq!(parse(shipped).unwrap(), Config::default());
    }

    #[test]
    fn the_shipped_upload_example_states_the_sink_defaults() {
        let shipped = include_str!("../config/vigil.toml");
        let start = shipped.find("# [[upload]]").expect("an [[upload]] example");
        let example: String =
            shipped[start..].lines().filter_map(|l| l.strip_prefix("# ")).map(|l| format!("{l}\n")).collect();
        let c = parse(&example).unwrap_or_else(|e| panic!("{e:?}\n{example}"));
        assert_eq!(c.upload, vec![vigil_actors::config::UploadConfig::default()]);
        // Every key is shown, not only the ones whose value differs from the default.
        let shown: toml::Table = toml::from_str(&example).unwrap();
        let shown: Vec<&String> = shown["upload"].as_array().unwrap()[0].as_table().unwrap().keys().collect();
        let all = toml::Table::try_from(vigil_actors::config::UploadConfig::default()).unwrap();
        assert_eq!(shown, all.keys().collect::<Vec<_>>());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn every_error_is_reported_with_its_position() {
        let text = "[agent]\nlog_level = \"loud\"\n\n[supervisor]\nheartbeat_interval_secs = \"5\"\nbogus = 1\n\n[nope]\nx = 1\n";
        let e = errs(text);
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(e[0].starts_with("2:1: `agent.log_level`"), "{e:#?}");
        assert!(e[1].starts_with("5:1: `supervisor.heartbeat_interval_secs`"), "{e:#?}");
        assert!(e[2].starts_with("6:1: `supervisor.bogus`: unknown field `bogus`"), "{e:#?}");
        assert!(e[3].starts_with("8:2: `nope`: unknown field `nope`"), "{e:#?}");
    }

    #[test]
    fn semantic_errors_are_located_too() {
        let text = "[supervisor]\n  heartbeat_interval_secs = 5\n  heartbeat_timeout_secs = 2\n[status]\nlisten = \"localhost:1\"\n";
        let e = errs(text);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].starts_with("3:3: `supervisor.heartbeat_timeout_secs`: must be longer"), "{e:#?}");
        assert!(e[1].starts_with("5:1: `status.listen`"), "{e:#?}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = errs("[agent]\nhostname = \n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("2:"), "{e:#?}");
    }

    #[test]
    fn inline_tables_and_decimals() {
        let c =
            parse("agent = { tags = { dc = \"eu\" } }\nsupervisor.heartbeat_interval_secs = 0.5\n").unwrap();
        assert_eq!(c.agent.tags["dc"], "eu");
        assert_eq!(c.supervisor.heartbeat_interval_secs, 0.5);
        let e = errs("agent = { tags = { dc = 1 }, nah = 2 }\n");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].starts_with("1:11: `agent.tags.dc`") || e[0].contains("agent.tags"), "{e:#?}");
    }
}
