//! The `lockd` binary: `lockd serve` runs the server; `acquire`, `renew`, `release`,
//! `downgrade`, `inspect`, `list` and `events` talk to a running one.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lockd::{ServeArgs, Server};
use tracing_subscriber::EnvFilter;

#[cfg(feature = "http")]
mod cli;

/// Events fetched per `GET /v1/events` by `lockd events`.
#[cfg(feature = "http")]
const EVENTS_PAGE: usize = 1000;

/// lockd: a lock server for distributed file systems.
#[derive(Debug, Parser)]
#[command(name = "lockd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (prints `lockd listening on http://ADDR` once it accepts connections, then
    /// `lockd grpc listening on grpc://ADDR` unless --grpc-listen is off; `https://` and
    /// `grpcs://` with --tls-cert, whose files are reloaded on SIGHUP).
    Serve(Box<ServeArgs>),
    /// Acquire one lock, or several all together (--shared for readers, --subtree for whole
    /// subtrees, --lock-delay after an expiry), and print tokens and fences.
    #[cfg(feature = "http")]
    Acquire(cli::AcquireArgs),
    /// Renew one lease, or several in one request.
    #[cfg(feature = "http")]
    Renew(cli::RenewArgs),
    /// Release one lock, or several in one request.
    #[cfg(feature = "http")]
    Release(cli::ReleaseArgs),
    /// Turn an exclusive lock into a shared one (same token, fence and expiry).
    #[cfg(feature = "http")]
    Downgrade(cli::DowngradeArgs),
    /// Show who holds an object, how many wait for it, and any lock-delay in force.
    #[cfg(feature = "http")]
    Inspect(cli::InspectArgs),
    /// List current locks.
    #[cfg(feature = "http")]
    List(cli::ListArgs),
    /// Print the event log; --follow keeps printing new events.
    #[cfg(feature = "http")]
    Events(cli::EventsArgs),
}

fn init_logs(filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("log filter `{filter}`: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops lockd");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads the TLS certificate, key and client CA on every SIGHUP, for new connections; a
/// reload that fails is logged and the old ones stay in use.
#[cfg(unix)]
fn reload_tls_on_sighup(reloader: lockd::TlsReloader) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP (TLS reloads): {e}"))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let files = reloader.files();
            match reloader.reload() {
                Ok(()) => tracing::info!(
                    cert = %files.cert.display(),
                    client_ca = ?files.client_ca,
                    "SIGHUP: reloaded the TLS certificate; new connections use it"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: cannot reload the TLS certificate; still serving the previous one"
                ),
            }
        }
    });
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let resolved = args
        .resolve(std::env::var("LOCKD_TOKEN_SECRET").ok())
        .map_err(|e| e.to_string())?;
    init_logs(&resolved.log)?;
    let server = Server::bind(resolved.server)
        .await
        .map_err(|e| e.to_string())?;
    // Listening for SIGHUP before the address is printed: a reload asked right after start
    // does not kill the process (SIGHUP's default).
    #[cfg(unix)]
    if let Some(reloader) = server.tls_reloader() {
        reload_tls_on_sighup(reloader)?;
    }
    let mut stdout = std::io::stdout().lock();
    // Tests and scripts read the first line; the gRPC address, when on, comes second.
    writeln!(stdout, "lockd listening on {}", server.url())
        .and_then(|()| match server.grpc_url() {
            Some(url) => writeln!(stdout, "lockd grpc listening on {url}"),
            None => Ok(()),
        })
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);
    server
        .run_until(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lockd: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            #[cfg(feature = "http")]
            Command::Acquire(args) => cli::acquire(args).await.map_err(|e| e.to_string()),
            #[cfg(feature = "http")]
            Command::Renew(args) => cli::renew(args).await.map_err(|e| e.to_string()),
            #[cfg(feature = "http")]
            Command::Release(args) => cli::release(args).await.map_err(|e| e.to_string()),
            #[cfg(feature = "http")]
            Command::Downgrade(args) => cli::downgrade(args).await.map_err(|e| e.to_string()),
            #[cfg(feature = "http")]
            Command::Inspect(args) => cli::inspect(args).await.map_err(|e| e.to_string()),
            #[cfg(feature = "http")]
            Command::List(args) => cli::list(args).await.map_err(|e| e.to_string()),
            #[cfg(feature = "http")]
            Command::Events(args) => cli::events(args).await.map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lockd: error: {message}");
            ExitCode::FAILURE
        }
    }
}
