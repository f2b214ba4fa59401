//! Which Compose files and which project a command means, found the way `docker-compose` finds
//! them, so that `capprof profile --compose FILE` and `capprof compose apply FILE` name the same
//! profiles that `docker-compose -f FILE up` creates.
//!
//! Containers carry their project in the `com.docker.compose.project` label; the daemon keeps
//! service profiles under `project/service`. The name Compose gives a project, in order:
//! 1. `-p`/`--project-name` (capprof: `--project`);
//! 2. `COMPOSE_PROJECT_NAME` in the environment, then in the `.env` file next to the first
//!    Compose file (Compose v2 reads it there; v1 reads `.env` in the current directory, which
//!    is the same directory when it runs where the file is);
//! 3. the top-level `name:` of the files (Compose v2 only);
//! 4. the name of the first file's directory.
//!
//! Compose v1 (1.29) then lowercases the name and removes every character other than `a-z`,
//! `0-9`, `-` and `_` (`re.sub(r'[^-_a-z0-9]', '', name.lower())`); Compose v2 does the same for
//! directory names. An empty result is `default`.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// The file names `docker-compose` looks for when no `-f` is given, in its order.
pub const DEFAULT_FILE_NAMES: [&str; 4] = [
    "docker-compose.yml",
    "docker-compose.yaml",
    "compose.yml",
    "compose.yaml",
];

/// Override files Compose adds to a default file found in the same directory.
pub const DEFAULT_OVERRIDE_NAMES: [&str; 4] = [
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
    "compose.override.yml",
    "compose.override.yaml",
];

/// The environment variable Compose reads the project name from.
pub const PROJECT_NAME_ENV: &str = "COMPOSE_PROJECT_NAME";

/// Why the files or the project cannot be determined.
#[derive(Debug, thiserror::Error)]
pub enum ComposeFilesError {
    #[error(
        "no Compose file given and none found in {} or its parents (looked for {}); name one with -f FILE",
        .dir.display(),
        DEFAULT_FILE_NAMES.join(", ")
    )]
    NoDefaultFile { dir: PathBuf },
    #[error(
        "{} and {} are both override files in one directory; Compose refuses this too: remove one",
        .first.display(),
        .second.display()
    )]
    TwoOverrides { first: PathBuf, second: PathBuf },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a project name came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameOrigin {
    Flag,
    Environment,
    EnvFile(PathBuf),
    TopLevelName(PathBuf),
    Directory(PathBuf),
    /// The `com.docker.compose.project` label of containers that ran.
    Labels,
}

impl fmt::Display for NameOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameOrigin::Flag => f.write_str("--project"),
            NameOrigin::Environment => write!(f, "{PROJECT_NAME_ENV}"),
            NameOrigin::EnvFile(path) => write!(f, "{PROJECT_NAME_ENV} in {}", path.display()),
            NameOrigin::TopLevelName(path) => write!(f, "`name:` in {}", path.display()),
            NameOrigin::Directory(path) => {
                write!(f, "the name of the directory {}", path.display())
            }
            NameOrigin::Labels => f.write_str("the containers' com.docker.compose.project label"),
        }
    }
}

/// A Compose project name and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectName {
    pub name: String,
    pub origin: NameOrigin,
}

/// Compose's normalization: lowercase, then only `a-z`, `0-9`, `-`, `_` kept; `default` if
/// nothing is left.
pub fn normalize(name: &str) -> String {
    let normalized: String = name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
        .collect();
    match normalized.is_empty() {
        true => "default".to_owned(),
        false => normalized,
    }
}

/// The Compose files a command means: the ones given, else `COMPOSE_FILE` (separated by `:`),
/// else the default file in `cwd` or its nearest parent that has one, plus its override file.
pub fn resolve_files(
    given: &[PathBuf],
    compose_file_env: Option<&str>,
    cwd: &Path,
) -> Result<Vec<PathBuf>, ComposeFilesError> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    if let Some(value) = compose_file_env.filter(|value| !value.trim().is_empty()) {
        return Ok(value
            .split(':')
            .filter(|part| !part.is_empty())
            .map(|part| cwd.join(part))
            .collect());
    }
    for dir in cwd.ancestors() {
        let Some(found) = DEFAULT_FILE_NAMES
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file())
        else {
            continue;
        };
        let overrides: Vec<PathBuf> = DEFAULT_OVERRIDE_NAMES
            .iter()
            .map(|name| dir.join(name))
            .filter(|path| path.is_file())
            .collect();
        if let [first, second, ..] = overrides.as_slice() {
            return Err(ComposeFilesError::TwoOverrides {
                first: first.clone(),
                second: second.clone(),
            });
        }
        return Ok(std::iter::once(found).chain(overrides).collect());
    }
    Err(ComposeFilesError::NoDefaultFile {
        dir: cwd.to_path_buf(),
    })
}

/// The project name for `files` (see the module documentation); `explicit` is `--project`,
/// `environment` the value of `COMPOSE_PROJECT_NAME`.
pub fn project_name(
    explicit: Option<&str>,
    environment: Option<&str>,
    files: &[PathBuf],
) -> Result<ProjectName, ComposeFilesError> {
    let named = |name: &str, origin| ProjectName {
        name: normalize(name),
        origin,
    };
    if let Some(name) = explicit.filter(|name| !name.is_empty()) {
        return Ok(named(name, NameOrigin::Flag));
    }
    if let Some(name) = environment.filter(|name| !name.is_empty()) {
        return Ok(named(name, NameOrigin::Environment));
    }
    let first = files.first().map(|path| absolute(path));
    let directory = first
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| absolute(Path::new(".")));
    let env_file = directory.join(".env");
    if let Some(name) = read_env_file_value(&env_file, PROJECT_NAME_ENV)? {
        return Ok(named(&name, NameOrigin::EnvFile(env_file)));
    }
    for file in files.iter().rev() {
        if let Some(name) = top_level_name(file)? {
            return Ok(named(&name, NameOrigin::TopLevelName(file.clone())));
        }
    }
    let base = directory
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(named(&base, NameOrigin::Directory(directory)))
}

/// `path` made absolute against the current directory, with `.` and `..` taken out lexically
/// (as Python's `os.path.abspath`, which Compose uses).
fn absolute(path: &Path) -> PathBuf {
    let joined = match path.is_absolute() {
        true => path.to_path_buf(),
        false => std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path),
    };
    let mut clean = PathBuf::new();
    for component in joined.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}

/// The value of `key` in a dotenv file (`KEY=value`, optional quotes, `#` comments), or `None`
/// when the file or the key is absent.
fn read_env_file_value(path: &Path, key: &str) -> Result<Option<String>, ComposeFilesError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ComposeFilesError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    Ok(env_file_value(&text, key))
}

fn env_file_value(text: &str, key: &str) -> Option<String> {
    let mut value = None;
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let Some((name, raw)) = line.split_once('=') else {
            continue;
        };
        if name.trim() != key {
            continue;
        }
        let raw = raw.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|quote| {
                raw.strip_prefix(*quote)
                    .and_then(|rest| rest.split_once(*quote))
                    .map(|(inside, _)| inside)
            })
            .unwrap_or_else(|| raw.split(" #").next().unwrap_or(raw).trim());
        // The last definition wins, as in a shell.
        value = Some(unquoted.to_owned());
    }
    value.filter(|value| !value.is_empty())
}

/// The top-level `name:` of a Compose file, if it has one.
fn top_level_name(path: &Path) -> Result<Option<String>, ComposeFilesError> {
    let text = std::fs::read_to_string(path).map_err(|source| ComposeFilesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // A file that does not parse gets its precise error from the Compose reader later.
    let Ok(document) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) else {
        return Ok(None);
    };
    Ok(document
        .get("name")
        .and_then(serde_yaml_ng::Value::as_str)
        .map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_compose_v1() {
        assert_eq!(normalize("My Web.App_2-x"), "mywebapp_2-x");
        assert_eq!(normalize("webapp"), "webapp");
        assert_eq!(normalize("..."), "default");
        assert_eq!(normalize("Ünïcode"), "ncode");
    }

    #[test]
    fn the_flag_beats_the_environment_which_beats_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("Shop.Front");
        std::fs::create_dir(&project).unwrap();
        let file = project.join("docker-compose.yml");
        std::fs::write(&file, "services:\n  web:\n    image: x\n").unwrap();
        let files = [file];
        assert_eq!(
            project_name(Some("Given"), Some("env"), &files).unwrap(),
            ProjectName {
                name: "given".into(),
                origin: NameOrigin::Flag
            }
        );
        assert_eq!(
            project_name(None, Some("from_env"), &files).unwrap().name,
            "from_env"
        );
        let by_directory = project_name(None, None, &files).unwrap();
        assert_eq!(by_directory.name, "shopfront");
        assert_eq!(by_directory.origin, NameOrigin::Directory(project.clone()));
    }

    #[test]
    fn the_env_file_then_the_top_level_name_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("compose.yaml");
        std::fs::write(&file, "name: Named\nservices:\n  web:\n    image: x\n").unwrap();
        let files = [file.clone()];
        let named = project_name(None, None, &files).unwrap();
        assert_eq!(named.name, "named");
        assert_eq!(named.origin, NameOrigin::TopLevelName(file));
        std::fs::write(
            dir.path().join(".env"),
            "# settings\nOTHER=1\nCOMPOSE_PROJECT_NAME=\"From Env\"\n",
        )
        .unwrap();
        let from_env_file = project_name(None, None, &files).unwrap();
        assert_eq!(from_env_file.name, "fromenv");
        assert!(matches!(from_env_file.origin, NameOrigin::EnvFile(_)));
    }

    #[test]
    fn env_file_values_are_unquoted_and_the_last_wins() {
        assert_eq!(
            env_file_value("A=1\nA='two' # note\n", "A").as_deref(),
            Some("two")
        );
        assert_eq!(
            env_file_value("export A=three # note", "A").as_deref(),
            Some("three")
        );
        assert_eq!(env_file_value("A=\n", "A"), None);
        assert_eq!(env_file_value("# A=1\n", "A"), None);
    }

    #[test]
    fn default_files_are_found_upwards_with_their_override() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        assert!(matches!(
            resolve_files(&[], None, &nested),
            Err(ComposeFilesError::NoDefaultFile { .. })
        ));
        std::fs::write(dir.path().join("compose.yaml"), "services: {}\n").unwrap();
        std::fs::write(dir.path().join("compose.override.yml"), "services: {}\n").unwrap();
        assert_eq!(
            resolve_files(&[], None, &nested).unwrap(),
            [
                dir.path().join("compose.yaml"),
                dir.path().join("compose.override.yml")
            ]
        );
        std::fs::write(
            dir.path().join("docker-compose.override.yml"),
            "services: {}\n",
        )
        .unwrap();
        assert!(matches!(
            resolve_files(&[], None, &nested),
            Err(ComposeFilesError::TwoOverrides { .. })
        ));
        assert_eq!(
            resolve_files(&[], Some("x.yml:y.yml"), &nested).unwrap(),
            [nested.join("x.yml"), nested.join("y.yml")]
        );
        let given = [PathBuf::from("given.yml")];
        assert_eq!(
            resolve_files(&given, Some("x.yml"), &nested).unwrap(),
            given
        );
    }
}
