//! Where the Docker engine listens, read the way the docker CLI reads it.

use std::{fmt, path::PathBuf};

/// The engine's socket when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The port the docker CLI assumes for `tcp://host` without TLS.
const DEFAULT_TCP_PORT: u16 = 2375;

/// A Docker engine address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EngineAddress {
    /// A Unix socket (`unix:///var/run/docker.sock`).
    Unix(PathBuf),
    /// Plain HTTP over TCP (`tcp://host:port`).
    Tcp { host: String, port: u16 },
}

/// Why an engine address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error(
        "DOCKER_HOST={value:?} is not an address capprof understands: {reason}; use unix:///path/to/docker.sock or tcp://host:port"
    )]
    Invalid { value: String, reason: &'static str },
    #[error(
        "DOCKER_HOST={value:?} uses the {scheme}:// transport, which capprof does not speak; use unix:///path/to/docker.sock or tcp://host:port (for a remote engine, forward its socket, e.g. `ssh -L /tmp/docker.sock:/var/run/docker.sock host`)"
    )]
    UnsupportedScheme { value: String, scheme: String },
    #[error(
        "DOCKER_TLS_VERIFY is set, but capprof does not speak TLS to the engine; unset it and use the engine's Unix socket, or forward a TLS endpoint to a local socket"
    )]
    TlsNotSupported,
}

impl EngineAddress {
    /// The default socket, [`DEFAULT_SOCKET`].
    pub fn default_socket() -> Self {
        Self::Unix(PathBuf::from(DEFAULT_SOCKET))
    }

    /// `DOCKER_HOST` if set and not empty, else [`DEFAULT_SOCKET`], like the docker CLI (without
    /// contexts). Refuses `DOCKER_TLS_VERIFY`.
    pub fn from_env() -> Result<Self, AddressError> {
        let tls = std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|value| !value.is_empty());
        if tls {
            return Err(AddressError::TlsNotSupported);
        }
        Self::from_docker_host(std::env::var("DOCKER_HOST").ok().as_deref())
    }

    /// The address a `DOCKER_HOST` value names; unset or empty means the default socket.
    pub fn from_docker_host(value: Option<&str>) -> Result<Self, AddressError> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::default_socket()),
            Some(value) => Self::parse(value),
        }
    }

    /// Parses `unix:///path` or `tcp://host[:port]`.
    pub fn parse(value: &str) -> Result<Self, AddressError> {
        let invalid = |reason| AddressError::Invalid {
            value: value.to_owned(),
            reason,
        };
        let Some((scheme, rest)) = value.split_once("://") else {
            return Err(invalid("it has no scheme"));
        };
        match scheme {
            "unix" => {
                if !rest.starts_with('/') {
                    return Err(invalid("a unix:// address needs an absolute socket path"));
                }
                Ok(Self::Unix(PathBuf::from(rest)))
            }
            "tcp" => {
                let authority = rest.trim_end_matches('/');
                if authority.is_empty() {
                    return Err(invalid("a tcp:// address needs a host"));
                }
                if authority.contains('/') {
                    return Err(invalid("a tcp:// address takes no path"));
                }
                let (host, port) = split_host_port(authority)
                    .ok_or_else(|| invalid("its port is not a number from 1 to 65535"))?;
                Ok(Self::Tcp { host, port })
            }
            other => Err(AddressError::UnsupportedScheme {
                value: value.to_owned(),
                scheme: other.to_owned(),
            }),
        }
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(String, u16)> {
    let parse_port = |port: &str| port.parse::<u16>().ok().filter(|port| *port != 0);
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = match after {
            "" => DEFAULT_TCP_PORT,
            _ => parse_port(after.strip_prefix(':')?)?,
        };
        return Some((format!("[{host}]"), port));
    }
    match authority.split_once(':') {
        None => Some((authority.to_owned(), DEFAULT_TCP_PORT)),
        Some((host, port)) if !host.is_empty() => Some((host.to_owned(), parse_port(port)?)),
        Some(_) => None,
    }
}

impl fmt::Display for EngineAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_docker_host_means_the_default_socket() {
        let default = EngineAddress::Unix(PathBuf::from("/var/run/docker.sock"));
        assert_eq!(EngineAddress::from_docker_host(None).unwrap(), default);
        assert_eq!(EngineAddress::from_docker_host(Some("")).unwrap(), default);
        assert_eq!(
            EngineAddress::from_docker_host(Some("  ")).unwrap(),
            default
        );
    }

    #[test]
    fn reads_unix_and_tcp_addresses() {
        assert_eq!(
            EngineAddress::parse("unix:///run/capprof/docker.sock").unwrap(),
            EngineAddress::Unix(PathBuf::from("/run/capprof/docker.sock"))
        );
        assert_eq!(
            EngineAddress::parse("tcp://10.0.0.5:2376").unwrap(),
            EngineAddress::Tcp {
                host: "10.0.0.5".into(),
                port: 2376
            }
        );
        assert_eq!(
            EngineAddress::parse("tcp://docker.internal").unwrap(),
            EngineAddress::Tcp {
                host: "docker.internal".into(),
                port: 2375
            }
        );
        assert_eq!(
            EngineAddress::parse("tcp://[::1]:2375/").unwrap(),
            EngineAddress::Tcp {
                host: "[::1]".into(),
                port: 2375
            }
        );
    }

    #[test]
    fn prints_addresses_as_docker_host_values() {
        for value in [
            "unix:///var/run/docker.sock",
            "tcp://127.0.0.1:2375",
            "tcp://[::1]:2376",
        ] {
            assert_eq!(EngineAddress::parse(value).unwrap().to_string(), value);
        }
    }

    #[test]
    fn refuses_what_it_cannot_use_and_says_what_to_write() {
        for value in [
            "/var/run/docker.sock",
            "unix://relative.sock",
            "tcp://",
            "tcp://host:port",
            "tcp://host:0",
            "tcp://:2375",
            "tcp://host:2375/path",
        ] {
            let error = EngineAddress::parse(value).unwrap_err();
            assert!(
                matches!(error, AddressError::Invalid { .. }),
                "{value}: {error}"
            );
            assert!(error.to_string().contains("unix:///"), "{error}");
        }
        let error = EngineAddress::parse("ssh://me@host").unwrap_err();
        assert!(
            matches!(&error, AddressError::UnsupportedScheme { scheme, .. } if scheme == "ssh"),
            "{error}"
        );
        assert!(error.to_string().contains("ssh -L"), "{error}");
        assert!(matches!(
            EngineAddress::parse("npipe:////./pipe/docker_engine"),
            Err(AddressError::UnsupportedScheme { .. })
        ));
    }
}
