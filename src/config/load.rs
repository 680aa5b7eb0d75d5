//! Reading config and route files: `${ENV}` expansion, YAML parsing with source lines,
//! relative paths. Errors carry `path:line` so that `switchboard check` can point at them.

use super::GatewayConfig;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where something was written: a file and a 1-based line (0 = unknown).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub file: PathBuf,
    pub line: u64,
}

impl Location {
    pub fn new(file: impl Into<PathBuf>, line: u64) -> Self {
        Self {
            file: file.into(),
            line,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}", self.file.display(), self.line)
        } else {
            write!(f, "{}", self.file.display())
        }
    }
}

/// One problem found while loading: `path:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub location: Location,
    pub message: String,
}

impl LoadError {
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        Self {
            location,
            message: message.into(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// All problems of one load attempt (loading goes on after the first to report many).
#[derive(Debug, Clone, Default)]
pub struct LoadErrors(pub Vec<LoadError>);

impl LoadErrors {
    /// Records a problem (once: expanded routes can hit the same one repeatedly).
    pub fn push(&mut self, location: Location, message: impl Into<String>) {
        let error = LoadError::new(location, message);
        if !self.0.contains(&error) {
            self.0.push(error);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result<T>(self, value: T) -> Result<T, LoadErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<LoadError> for LoadErrors {
    fn from(error: LoadError) -> Self {
        Self(vec![error])
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// A YAML file's text after `${ENV}` expansion (in values: see `config::env`).
pub struct SourceText {
    pub path: PathBuf,
    pub text: String,
}

impl SourceText {
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        let raw = std::fs::read_to_string(path)
            .map_err(|e| LoadError::new(Location::new(path, 0), format!("cannot read: {e}")))?;
        let text = super::env::expand_yaml(&raw, |name| std::env::var(name).ok())
            .map_err(|(line, message)| LoadError::new(Location::new(path, line), message))?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
        })
    }

    /// Parses the YAML into `T`; a syntax or shape error carries its line.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, LoadError> {
        serde_saphyr::from_str::<T>(&self.text).map_err(|e| {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            LoadError::new(Location::new(&self.path, line), yaml_error_message(&e))
        })
    }
}

/// The first line of a parser error, without the snippet rendering that follows it.
fn yaml_error_message(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid YAML")
        .trim()
        .trim_start_matches("error: ");
    // The line is already in `path:line:`; drop the parser's own `line N column M: `.
    match first.split_once(": ") {
        Some((position, rest))
            if position.starts_with("line ") && position.contains(" column ") =>
        {
            rest.to_string()
        }
        _ => first.to_string(),
    }
}

/// Reads `switchboard.yaml` and resolves its relative paths against its folder.
pub fn load_gateway_config(path: &Path) -> Result<GatewayConfig, LoadErrors> {
    let source = SourceText::read(path)?;
    let mut config: GatewayConfig = source.parse()?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            base_dir.join(p)
        }
    };
    config.descriptors = config.descriptors.iter().map(resolve).collect();
    config.mappings = config.mappings.iter().map(resolve).collect();
    if let Some(tls) = &mut config.tls {
        tls.cert = resolve(&tls.cert);
        tls.key = resolve(&tls.key);
    }
    for upstream in config.upstreams.values_mut() {
        let upstream = &mut upstream.value;
        let grpc = upstream.grpc.as_mut().and_then(|g| g.tls.as_mut());
        let amqp = upstream.amqp.as_mut().and_then(|a| a.tls.as_mut());
        for tls in grpc.into_iter().chain(amqp) {
            tls.resolve(&base_dir);
        }
    }
    config.base_dir = base_dir;
    config.path = path.to_path_buf();
    // The file parsed above, so this second, lenient read of it cannot fail in practice;
    // without it errors only lose their line.
    config.lines = source.parse::<SectionLines>().unwrap_or_default();
    Ok(config)
}

/// Where sections of `switchboard.yaml` begin, for the errors found when they are built
/// (a bad CORS origin, JWT key or rate-limit policy) rather than when they are parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SectionLines {
    pub cors: u64,
    pub auth: u64,
    pub rate_limits: u64,
    /// Each `rate_limits.policies` entry.
    pub policies: std::collections::BTreeMap<String, u64>,
    pub cache: u64,
    pub trusted_proxies: u64,
}

impl<'de> serde::Deserialize<'de> for SectionLines {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::IgnoredAny;
        use serde_saphyr::Spanned;
        type At = Option<Spanned<IgnoredAny>>;
        fn line(at: &At) -> u64 {
            at.as_ref().map_or(0, |s| s.referenced.line())
        }
        #[derive(serde::Deserialize)]
        struct Limits {
            #[serde(default)]
            policies: std::collections::BTreeMap<String, Spanned<IgnoredAny>>,
        }
        #[derive(serde::Deserialize)]
        struct Sections {
            #[serde(default)]
            cors: At,
            #[serde(default)]
            auth: At,
            #[serde(default)]
            rate_limits: Option<Spanned<Limits>>,
            #[serde(default)]
            cache: At,
            #[serde(default)]
            trusted_proxies: At,
        }
        let s = Sections::deserialize(deserializer)?;
        Ok(SectionLines {
            cors: line(&s.cors),
            auth: line(&s.auth),
            rate_limits: s.rate_limits.as_ref().map_or(0, |r| r.referenced.line()),
            policies: s
                .rate_limits
                .map(|r| {
                    r.value
                        .policies
                        .into_iter()
                        .map(|(name, at)| (name, at.referenced.line()))
                        .collect()
                })
                .unwrap_or_default(),
            cache: line(&s.cache),
            trusted_proxies: line(&s.trusted_proxies),
        })
    }
}

/// Files named by `paths`: files as they are, folders walked recursively for files whose
/// extension is one of `extensions`. Sorted, so loads are deterministic.
pub(crate) fn collect_files(
    paths: &[PathBuf],
    extensions: &[&str],
    errors: &mut LoadErrors,
) -> Vec<PathBuf> {
    fn walk(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let path = entry.path();
            // Hidden entries are not config: editors' lock and swap files, and a Kubernetes
            // ConfigMap volume's `..data` / `..<timestamp>` folders, which would otherwise
            // load every file twice.
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            if entry.file_type()?.is_dir() {
                walk(&path, extensions, out)?;
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
            {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            if let Err(e) = walk(path, extensions, &mut out) {
                errors.push(Location::new(path, 0), format!("cannot read folder: {e}"));
            }
        } else if path.is_file() {
            out.push(path.clone());
        } else {
            errors.push(Location::new(path, 0), "no such file or folder");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_have_lines() {
        let source = SourceText {
            path: PathBuf::from("x.yaml"),
            text: "listen: 0.0.0.0:8080\nbogus: 1\n".into(),
        };
        let err = source.parse::<GatewayConfig>().unwrap_err();
        assert_eq!(err.location.line, 2, "{err}");
        assert!(err.message.contains("bogus"), "{err}");
    }
}
