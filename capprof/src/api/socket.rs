//! Where the API listens: a Unix socket always (`/run/capprof/capprof.sock`, mode 0660, group
//! `capprof` when that group exists), and TCP only when asked, then only with TLS and client
//! certificates.

use std::{
    ffi::CString,
    io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{info, warn};

/// The socket the daemon listens on and clients connect to unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/capprof/capprof.sock";
/// Overrides [`DEFAULT_SOCKET`] for the daemon and every client.
pub const SOCKET_ENV: &str = "CAPPROF_SOCKET";
/// Members of this group may use the socket, when the group exists.
pub const DEFAULT_GROUP: &str = "capprof";
/// Owner and group may connect; nobody else.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// Which group owns the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketGroup {
    /// [`DEFAULT_GROUP`] when it exists, else the daemon's own group (so only root may connect).
    DefaultIfExists,
    /// This group, which must exist.
    Named(String),
}

/// The Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixSocketConfig {
    pub path: PathBuf,
    pub mode: u32,
    pub group: SocketGroup,
}

impl Default for UnixSocketConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_SOCKET),
            mode: DEFAULT_SOCKET_MODE,
            group: SocketGroup::DefaultIfExists,
        }
    }
}

/// PEM files for TCP: the server's certificate chain and key, and the CA that signs the
/// certificates clients must present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// TCP, always with TLS and client-certificate authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    pub addr: SocketAddr,
    pub tls: TlsFiles,
}

/// Everything the daemon listens on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenConfig {
    pub unix: UnixSocketConfig,
    pub tcp: Option<TcpConfig>,
}

/// The daemon's listening options, for `capprof daemon` to flatten into its arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ListenArgs {
    /// The API's Unix socket.
    #[arg(long, env = SOCKET_ENV, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// The group allowed to use the socket [default: capprof, when that group exists].
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Also serve the API over TCP on this address (needs --tls-cert, --tls-key, --tls-client-ca).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen_tcp: Option<SocketAddr>,

    /// The server's certificate chain (PEM), for --listen-tcp.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// The server's private key (PEM), for --listen-tcp.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// The CA whose certificates clients must present (PEM), for --listen-tcp.
    #[arg(long, value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ListenArgs {
    /// The configuration, refusing TCP without TLS.
    pub fn to_config(&self) -> Result<ListenConfig, SocketError> {
        let tcp = match (
            &self.listen_tcp,
            &self.tls_cert,
            &self.tls_key,
            &self.tls_client_ca,
        ) {
            (None, None, None, None) => None,
            (Some(addr), Some(cert), Some(key), Some(client_ca)) => Some(TcpConfig {
                addr: *addr,
                tls: TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: client_ca.clone(),
                },
            }),
            (Some(_), ..) => return Err(SocketError::TcpWithoutTls),
            (None, ..) => return Err(SocketError::TlsWithoutTcp),
        };
        Ok(ListenConfig {
            unix: UnixSocketConfig {
                path: self.socket.clone(),
                mode: DEFAULT_SOCKET_MODE,
                group: match &self.socket_group {
                    Some(group) => SocketGroup::Named(group.clone()),
                    None => SocketGroup::DefaultIfExists,
                },
            },
            tcp,
        })
    }
}

/// Why the API cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another capprof daemon already answers on {path}; stop it first, or give this one another --socket"
    )]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; remove it, or choose another --socket")]
    NotASocket { path: PathBuf },
    #[error("cannot use {path} for the API socket: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the owner or mode of {path}: {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the group `{group}` does not exist; create it (`groupadd {group}`) or choose another --socket-group"
    )]
    NoSuchGroup { group: String },
    #[error(
        "TCP serves the API only with TLS and client certificates: pass --tls-cert, --tls-key and --tls-client-ca with --listen-tcp"
    )]
    TcpWithoutTls,
    #[error("--tls-cert, --tls-key and --tls-client-ca only apply with --listen-tcp")]
    TlsWithoutTcp,
    #[error("cannot read {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the TLS configuration is not usable: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    TcpBind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the API server failed: {0}")]
    Serve(String),
}

/// Bound listeners, ready to serve. Dropping them removes the socket file (when it is still
/// the one this process created).
#[derive(Debug)]
pub struct Listeners {
    pub(super) unix: std::os::unix::net::UnixListener,
    unix_path: PathBuf,
    /// The socket file's inode, so that a successor's socket is never removed.
    unix_inode: u64,
    pub(super) tcp: Option<(std::net::TcpListener, ServerTlsConfig)>,
}

impl Listeners {
    /// Binds everything `config` asks for, failing before anything is served.
    pub fn bind(config: &ListenConfig) -> Result<Self, SocketError> {
        let tcp = match &config.tcp {
            Some(tcp) => Some(bind_tcp(tcp)?),
            None => None,
        };
        let (unix, unix_inode) = bind_unix(&config.unix)?;
        Ok(Self {
            unix,
            unix_path: config.unix.path.clone(),
            unix_inode,
            tcp,
        })
    }

    pub fn unix_path(&self) -> &Path {
        &self.unix_path
    }

    /// The TCP address actually bound (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.unix_path)
            .is_ok_and(|metadata| metadata.ino() == self.unix_inode);
        if ours && let Err(error) = std::fs::remove_file(&self.unix_path) {
            warn!(path = %self.unix_path.display(), %error, "cannot remove the API socket");
        }
    }
}

fn bind_unix(
    config: &UnixSocketConfig,
) -> Result<(std::os::unix::net::UnixListener, u64), SocketError> {
    let path = &config.path;
    let path_error = |source| SocketError::Path {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(path_error)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::InUse { path: path.clone() }),
                // Nothing answers: a socket left by a daemon that did not stop cleanly.
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    info!(path = %path.display(), "removing a stale API socket");
                    std::fs::remove_file(path).map_err(path_error)?;
                }
                Err(error) => return Err(path_error(error)),
            }
        }
        Ok(_) => return Err(SocketError::NotASocket { path: path.clone() }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(path_error(error)),
    }
    let group =
        match &config.group {
            SocketGroup::Named(name) => {
                Some(group_id(name).map_err(path_error)?.ok_or_else(|| {
                    SocketError::NoSuchGroup {
                        group: name.clone(),
                    }
                })?)
            }
            SocketGroup::DefaultIfExists => group_id(DEFAULT_GROUP).map_err(path_error)?,
        };
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|source| SocketError::Bind {
            path: path.clone(),
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| SocketError::Bind {
            path: path.clone(),
            source,
        })?;
    let permissions = |source| SocketError::Permissions {
        path: path.clone(),
        source,
    };
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(permissions)?;
    } else {
        info!(
            "the group `{DEFAULT_GROUP}` does not exist: only root may use {}",
            path.display()
        );
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.mode))
        .map_err(permissions)?;
    let inode = std::fs::symlink_metadata(path).map_err(permissions)?.ino();
    Ok((listener, inode))
}

fn bind_tcp(config: &TcpConfig) -> Result<(std::net::TcpListener, ServerTlsConfig), SocketError> {
    // tonic's server takes rustls' process-wide provider; name ring (the one tonic is built
    // with) so that another dependency enabling a second provider cannot leave it ambiguous.
    // An error only means a provider was installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| SocketError::TlsFile {
            path: path.clone(),
            source,
        })
    };
    let (cert, key, client_ca) = (
        read(&config.tls.cert)?,
        read(&config.tls.key)?,
        read(&config.tls.client_ca)?,
    );
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(client_ca))
        .client_auth_optional(false);
    // Builds the acceptor now, so that a bad key or certificate fails before serving.
    tonic::transport::Server::builder()
        .tls_config(tls.clone())
        .map_err(|error| SocketError::Tls(error_chain(&error)))?;
    let listener =
        std::net::TcpListener::bind(config.addr).map_err(|source| SocketError::TcpBind {
            addr: config.addr,
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| SocketError::TcpBind {
            addr: config.addr,
            source,
        })?;
    Ok((listener, tls))
}

/// An error and its sources on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The id of a group, or `None` when no group has that name.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name contains NUL"))?;
    let mut buffer = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: `group` is plain data filled by getgrnam_r; the buffer outlives the call and
        // its length is passed along; `result` is set to null or to `&group`.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let status = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        match status {
            0 if result.is_null() => return Ok(None),
            0 => return Ok(Some(group.gr_gid)),
            libc::ERANGE if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 4, 0),
            // Some libcs report "no such group" as an error number.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("capprof-socket-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn unix_config(path: PathBuf) -> ListenConfig {
        ListenConfig {
            unix: UnixSocketConfig {
                path,
                mode: DEFAULT_SOCKET_MODE,
                group: SocketGroup::DefaultIfExists,
            },
            tcp: None,
        }
    }

    #[test]
    fn binds_with_mode_0660_and_removes_the_socket_when_dropped() {
        let dir = temp_dir("bind");
        let path = dir.join("nested/capprof.sock");
        let listeners = Listeners::bind(&unix_config(path.clone())).unwrap();
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        assert!(metadata.file_type().is_socket());
        assert_eq!(metadata.mode() & 0o777, 0o660);
        if let Some(gid) = group_id(DEFAULT_GROUP).unwrap() {
            assert_eq!(metadata.gid(), gid);
        }
        drop(listeners);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = temp_dir("stale");
        let path = dir.join("capprof.sock");
        let first = Listeners::bind(&unix_config(path.clone())).unwrap();
        assert!(matches!(
            Listeners::bind(&unix_config(path.clone())),
            Err(SocketError::InUse { .. })
        ));
        // A socket nobody listens on any more: what a killed daemon leaves behind.
        let stale = std::os::unix::net::UnixListener::bind(dir.join("stale.sock")).unwrap();
        drop(stale);
        drop(first);
        std::fs::rename(dir.join("stale.sock"), &path).unwrap();
        let second = Listeners::bind(&unix_config(path.clone())).unwrap();
        drop(second);
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            Listeners::bind(&unix_config(path.clone())),
            Err(SocketError::NotASocket { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn named_groups_must_exist() {
        let dir = temp_dir("group");
        let mut config = unix_config(dir.join("capprof.sock"));
        config.unix.group = SocketGroup::Named("capprof-no-such-group-xyz".into());
        assert!(matches!(
            Listeners::bind(&config),
            Err(SocketError::NoSuchGroup { .. })
        ));
        assert_eq!(group_id("root").unwrap(), Some(0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tcp_is_refused_without_tls() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            listen: ListenArgs,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.listen.to_config());
        assert!(matches!(
            parse(&["capprof", "--listen-tcp", "127.0.0.1:7777"]).unwrap(),
            Err(SocketError::TcpWithoutTls)
        ));
        let tls_only = parse(&["capprof", "--tls-cert", "a.pem"]).unwrap();
        assert!(matches!(tls_only, Err(SocketError::TlsWithoutTcp)));
        let full = parse(&[
            "capprof",
            "--listen-tcp",
            "127.0.0.1:7777",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-client-ca",
            "ca.pem",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(full.tcp.unwrap().addr, "127.0.0.1:7777".parse().unwrap());
        let missing_files = ListenConfig {
            tcp: Some(TcpConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                tls: TlsFiles {
                    cert: "/nonexistent/c.pem".into(),
                    key: "/nonexistent/k.pem".into(),
                    client_ca: "/nonexistent/ca.pem".into(),
                },
            }),
            ..unix_config(temp_dir("tls").join("capprof.sock"))
        };
        assert!(matches!(
            Listeners::bind(&missing_files),
            Err(SocketError::TlsFile { .. })
        ));
    }
}
