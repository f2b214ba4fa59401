//! capprof's gRPC API (`capprof.v1`): the server the daemon runs, the client the CLI uses, and
//! the rules that turn names into profiles. `docs/api.md` describes it for users.

pub mod client;
pub mod convert;
pub mod error;
pub mod selector;
pub mod server;
pub mod socket;
mod tls_probe;

use std::future::Future;

use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tracing::info;

pub use self::{
    client::{ApiClient, ClientError, ClientTarget, ConnectArgs, FailureKind},
    error::ApiError,
    server::{
        ApiContext, ApiService, NoContainerEngine, RunningContainer, RunningContainers,
        TracerHealth,
    },
    socket::{ListenArgs, ListenConfig, Listeners, SocketError},
};

/// Serves the API on `listeners` until `shutdown` completes.
///
/// Live streams end with UNAVAILABLE ("the daemon is shutting down") as soon as `shutdown`
/// completes, so shutting down never waits for a watching client. The socket file is removed
/// when `listeners` is dropped, at the end of this call.
pub async fn serve(
    context: ApiContext,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SocketError> {
    let (stop, stopping) = watch::channel(false);
    let service = ApiService::new(context, stopping.clone());
    let stopped = |mut stopping: watch::Receiver<bool>| async move {
        // A dropped sender means this function is returning anyway.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    let unix =
        tokio::net::UnixListener::from_std(listeners.unix.try_clone().map_err(|source| {
            SocketError::Bind {
                path: listeners.unix_path().to_owned(),
                source,
            }
        })?)
        .map_err(|source| SocketError::Bind {
            path: listeners.unix_path().to_owned(),
            source,
        })?;
    info!(socket = %listeners.unix_path().display(), "API listening");
    let unix_server = {
        let server = tonic::transport::Server::builder()
            .add_service(service.clone().into_server())
            .serve_with_incoming_shutdown(UnixListenerStream::new(unix), stopped(stopping.clone()));
        async move {
            server
                .await
                .map_err(|error| SocketError::Serve(socket::error_chain(&error)))
        }
    };
    let tcp_server = {
        let tcp = match &listeners.tcp {
            Some((listener, tls)) => {
                let addr = listener.local_addr().ok();
                let std_listener = listener
                    .try_clone()
                    .map_err(|source| SocketError::TcpBind {
                        addr: addr.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                        source,
                    })?;
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).map_err(|source| {
                        SocketError::TcpBind {
                            addr: addr.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                            source,
                        }
                    })?;
                info!(addr = ?addr, "API listening on TCP with TLS and client certificates");
                let builder = tonic::transport::Server::builder()
                    .tls_config(tls.clone())
                    .map_err(|error| SocketError::Tls(socket::error_chain(&error)))?;
                Some((builder, listener))
            }
            None => None,
        };
        let service = service.clone();
        let stopping = stopping.clone();
        async move {
            match tcp {
                Some((mut builder, listener)) => builder
                    .add_service(service.into_server())
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(listener),
                        stopped(stopping),
                    )
                    .await
                    .map_err(|error| SocketError::Serve(socket::error_chain(&error))),
                None => Ok(()),
            }
        }
    };
    let servers = async { tokio::try_join!(unix_server, tcp_server).map(|_| ()) };
    tokio::pin!(servers);
    let result = tokio::select! {
        result = &mut servers => result,
        () = shutdown => {
            stop.send_replace(true);
            servers.await
        }
    };
    drop(listeners);
    result
}
