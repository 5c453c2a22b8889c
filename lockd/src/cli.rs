//! `lockd acquire | release | renew | downgrade | inspect | list | events`: talk to a running
//! lockd from the shell.
//!
//! Each command prints a readable table by default and JSON with `--json` (`events` prints one
//! JSON object per line, so `--follow --json` is a stream of JSON lines). With one object,
//! `--json` prints the API's one-object answer; with several, the several-object one
//! (`{"owner", "ttl_ms", "locks": [...]}` for acquire, `{"results": [...]}` for release and
//! renew).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use lockcore::{
    AcquireRequest, Grant, Lease, ListQuery, LockError, LockInfo, LockMode, LockScope, LockService,
    LockSpec, LockToken, ObjectId, OwnerId,
};
use lockd_client::{ClientConfig, Event, LockdClient};
use lockd_wire::{EntryResult, GrantBody, LeaseBody, LockBody, ReleaseBody, ResultsBody};
use serde::Serialize;

/// Where the server is and how to print.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientArgs {
    /// The lockd server: http(s)://, or grpc(s)://HOST:PORT for its gRPC API (API key from env
    /// LOCKD_API_KEY).
    #[arg(
        long,
        env = "LOCKD_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    server: String,
    /// PEM file of CA certificates to trust for https:// and grpcs:// (a private CA).
    #[arg(long, env = "LOCKD_CA_FILE", value_name = "FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate to present over TLS, for a lockd with --tls-client-ca (needs
    /// --client-key).
    #[arg(long, env = "LOCKD_CLIENT_CERT", value_name = "FILE", global = true)]
    client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "LOCKD_CLIENT_KEY", value_name = "FILE", global = true)]
    client_key: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// `lockd acquire`.
#[derive(Debug, clap::Args)]
pub(crate) struct AcquireArgs {
    /// The objects to lock: one, or several (1 to 64) granted all together or not at all.
    #[arg(required = true, num_args = 1..)]
    objects: Vec<String>,
    /// Lock them shared (readers) instead of exclusively.
    #[arg(long)]
    shared: bool,
    /// Lock each object's whole subtree (the object and every id under it, as a directory
    /// rename needs) instead of the object alone.
    #[arg(long)]
    subtree: bool,
    /// Lock-delay, e.g. 5s (at most 60s): if the lease expires instead of being released,
    /// nothing conflicting is granted for this long after (default: the server's
    /// --default-lock-delay).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    lock_delay: Option<Duration>,
    /// Who holds it.
    #[arg(long)]
    owner: String,
    /// Lease length, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Block up to this long while another owner holds it (default: fail at once).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    wait: Duration,
    #[command(flatten)]
    client: ClientArgs,
}

/// `lockd release`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReleaseArgs {
    /// The locked objects (several are released in one request, each on its own).
    #[arg(required = true, num_args = 1..)]
    objects: Vec<String>,
    /// The token acquire printed; once per object, in the objects' order.
    #[arg(long = "token", required = true)]
    tokens: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `lockd renew`.
#[derive(Debug, clap::Args)]
pub(crate) struct RenewArgs {
    /// The locked objects (several are renewed in one request, each on its own).
    #[arg(required = true, num_args = 1..)]
    objects: Vec<String>,
    /// The token acquire printed; once per object, in the objects' order.
    #[arg(long = "token", required = true)]
    tokens: Vec<String>,
    /// New lease length from now, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    client: ClientArgs,
}

/// `lockd downgrade`.
#[derive(Debug, clap::Args)]
pub(crate) struct DowngradeArgs {
    /// The object locked exclusively.
    object: String,
    /// The token acquire printed.
    #[arg(long)]
    token: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// `lockd inspect`.
#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// The object to describe.
    object: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// `lockd list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Only objects starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// `lockd events`.
#[derive(Debug, clap::Args)]
pub(crate) struct EventsArgs {
    /// Only events after this sequence number.
    #[arg(long)]
    after: Option<u64>,
    /// Keep printing new events as they happen (until Ctrl-C or the server stops).
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn client_config(args: &ClientArgs) -> ClientConfig {
    let mut config = ClientConfig::from_url(args.server.clone());
    config.ca_file.clone_from(&args.ca_file);
    config.client_cert.clone_from(&args.client_cert);
    config.client_key.clone_from(&args.client_key);
    if let Ok(key) = std::env::var("LOCKD_API_KEY") {
        if !key.is_empty() {
            config.api_key = Some(key);
        }
    }
    config
}

/// The server as a [`LockService`], over HTTP or gRPC as its URL says.
fn connect(args: &ClientArgs) -> Result<Arc<dyn LockService>, LockError> {
    lockd_client::connect(client_config(args))
}

/// The server over HTTP, for what only the HTTP API has (the paged event log).
fn connect_http(args: &ClientArgs) -> Result<LockdClient, LockError> {
    if lockd_client::Transport::of_url(&args.server)? != lockd_client::Transport::Http {
        return Err(LockError::invalid_argument(
            "server",
            "`lockd events` reads the paged event log over HTTP: give the HTTP URL \
             (http://HOST:7070)",
        ));
    }
    LockdClient::new(client_config(args))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn out(text: &str) -> Result<(), LockError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(|e| LockError::Internal(format!("cannot write to stdout: {e}")))
}

/// Prints `value` as one line of JSON, in the API's wire format.
fn out_json<T: Serialize>(value: &T) -> Result<(), LockError> {
    let text = serde_json::to_string(value)
        .map_err(|e| LockError::Internal(format!("cannot encode the answer as JSON: {e}")))?;
    out(&text)
}

/// Prints a lease as the API's one-object answer (`body`, with the scope when known) or a table.
fn print_lease(lease: &Lease, body: LeaseBody, as_json: bool) -> Result<(), LockError> {
    if as_json {
        return out_json(&body);
    }
    let scope = body
        .scope
        .map(|scope| format!("\nscope   {scope}"))
        .unwrap_or_default();
    out(&format!(
        "object  {}\nowner   {}\nmode    {}{scope}\nfence   {}\nttl     {}\ntoken   {}",
        lease.object,
        lease.owner,
        lease.mode,
        lease.fence,
        humantime::format_duration(lease.ttl),
        lease.token.expose()
    ))
}

fn print_grant(request: &AcquireRequest, grant: &Grant, as_json: bool) -> Result<(), LockError> {
    if let [lease] = grant.leases.as_slice() {
        return print_lease(lease, LeaseBody::granted(request, lease), as_json);
    }
    let body = GrantBody::granted(request, grant);
    if as_json {
        return out_json(&body);
    }
    let rows: Vec<Vec<String>> = grant
        .leases
        .iter()
        .zip(&body.locks)
        .map(|(lease, granted)| {
            vec![
                lease.object.to_string(),
                lease.mode.to_string(),
                granted.scope.to_string(),
                lease.fence.to_string(),
                lease.token.expose().to_owned(),
            ]
        })
        .collect();
    out(&format!(
        "owner   {}\nttl     {}\n{}",
        grant.owner,
        humantime::format_duration(grant.ttl),
        table(&["OBJECT", "MODE", "SCOPE", "FENCE", "TOKEN"], &rows)
    ))
}

/// The request `lockd acquire` sends for `args`.
fn acquire_request(args: &AcquireArgs) -> Result<AcquireRequest, LockError> {
    let mode = if args.shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    };
    let scope = if args.subtree {
        LockScope::Subtree
    } else {
        LockScope::Object
    };
    let specs = args
        .objects
        .iter()
        .map(|object| Ok(LockSpec::new(ObjectId::new(object)?, mode).with_scope(scope)))
        .collect::<Result<Vec<_>, LockError>>()?;
    let owner = OwnerId::new(&args.owner)?;
    let mut request = AcquireRequest::many(specs, owner, args.ttl).with_wait(args.wait);
    if let Some(delay) = args.lock_delay {
        request = request.with_lock_delay(delay);
    }
    Ok(request)
}

pub(crate) async fn acquire(args: AcquireArgs) -> Result<(), LockError> {
    let client = connect(&args.client)?;
    let request = acquire_request(&args)?;
    let grant = client.acquire_with(&request).await?;
    print_grant(&request, &grant, args.client.json)
}

/// Pairs each object with its token, in order; the counts must match.
fn locks_of(
    objects: &[String],
    tokens: &[String],
) -> Result<Vec<(ObjectId, LockToken)>, LockError> {
    if objects.len() != tokens.len() {
        return Err(LockError::invalid_argument(
            "token",
            format!(
                "give one --token per object, in the same order ({} objects, {} tokens)",
                objects.len(),
                tokens.len()
            ),
        ));
    }
    objects
        .iter()
        .zip(tokens)
        .map(|(object, token)| Ok((ObjectId::new(object)?, LockToken::parse(token)?)))
        .collect()
}

/// Prints one line per lock of a batch (or the API's `{"results": [...]}`), then fails with
/// the first failed lock's error, if any.
fn print_results<T: Serialize + Clone>(
    verb: &str,
    locks: &[(ObjectId, LockToken)],
    outcomes: Vec<Result<T, LockError>>,
    as_json: bool,
    line: impl Fn(&ObjectId, &T) -> String,
) -> Result<(), LockError> {
    if as_json {
        let results = locks
            .iter()
            .zip(&outcomes)
            .map(|((object, _), outcome)| match outcome {
                Ok(done) => EntryResult::Done(done.clone()),
                Err(e) => EntryResult::failed(object.as_str(), e),
            })
            .collect();
        out_json(&ResultsBody { results })?;
    } else {
        for ((object, _), outcome) in locks.iter().zip(&outcomes) {
            match outcome {
                Ok(done) => out(&line(object, done))?,
                Err(e) => out(&format!("{object}: not {verb}: {e}"))?,
            }
        }
    }
    match outcomes.into_iter().find_map(Result::err) {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

pub(crate) async fn renew(args: RenewArgs) -> Result<(), LockError> {
    let client = connect(&args.client)?;
    let locks = locks_of(&args.objects, &args.tokens)?;
    if let [(object, token)] = locks.as_slice() {
        let lease = client.renew(object, token, args.ttl).await?;
        return print_lease(&lease, LeaseBody::from(&lease), args.client.json);
    }
    let outcomes: Vec<Result<LeaseBody, LockError>> = client
        .renew_many(&locks, args.ttl)
        .await?
        .into_iter()
        .map(|outcome| outcome.map(|lease| LeaseBody::from(&lease)))
        .collect();
    print_results(
        "renewed",
        &locks,
        outcomes,
        args.client.json,
        |object, lease| {
            format!(
                "renewed {object} (fence {}, ttl {})",
                lease.fence,
                humantime::format_duration(Duration::from_millis(lease.ttl_ms))
            )
        },
    )
}

pub(crate) async fn release(args: ReleaseArgs) -> Result<(), LockError> {
    let client = connect(&args.client)?;
    let locks = locks_of(&args.objects, &args.tokens)?;
    if let [(object, token)] = locks.as_slice() {
        let fence = client.release(object, token).await?;
        return if args.client.json {
            out_json(&ReleaseBody {
                object: object.to_string(),
                fence: fence.get(),
            })
        } else {
            out(&format!("released {object} (fence {fence})"))
        };
    }
    let outcomes: Vec<Result<ReleaseBody, LockError>> = client
        .release_many(&locks)
        .await?
        .into_iter()
        .zip(&locks)
        .map(|(outcome, (object, _))| {
            outcome.map(|fence| ReleaseBody {
                object: object.to_string(),
                fence: fence.get(),
            })
        })
        .collect();
    print_results(
        "released",
        &locks,
        outcomes,
        args.client.json,
        |object, released| format!("released {object} (fence {})", released.fence),
    )
}

pub(crate) async fn downgrade(args: DowngradeArgs) -> Result<(), LockError> {
    let client = connect(&args.client)?;
    let object = ObjectId::new(&args.object)?;
    let token = LockToken::parse(&args.token)?;
    let lease = client.downgrade(&object, &token).await?;
    print_lease(&lease, LeaseBody::from(&lease), args.client.json)
}

/// Lays out rows under a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut lines = vec![line(header.iter().map(|h| (*h).to_owned()).collect())];
    lines.extend(rows.iter().map(|r| line(r.clone())));
    lines.join("\n")
}

/// A duration as the tables show it: whole milliseconds, humanly.
fn shown(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(ms(d))).to_string()
}

/// `lockd inspect` as text: the lock, its holders, waiters and lock-delay.
fn describe(info: &LockInfo) -> String {
    let mut text = format!(
        "object   {}\nmode     {}\nwaiters  {}",
        info.object, info.mode, info.waiters
    );
    if let Some(delay) = &info.delay {
        text.push_str(&format!(
            "\ndelay    {} left, until {} (lock-delay of {}'s expired {} {} lease, fence {})",
            shown(delay.remaining),
            humantime::format_rfc3339_millis(delay.until),
            delay.owner,
            delay.scope,
            delay.mode,
            delay.fence
        ));
    }
    if info.holders.is_empty() {
        text.push_str("\nholders  none");
        return text;
    }
    let rows: Vec<Vec<String>> = info
        .holders
        .iter()
        .map(|holder| {
            vec![
                holder.owner.to_string(),
                holder.scope.to_string(),
                holder.fence.to_string(),
                shown(holder.ttl),
                humantime::format_rfc3339_millis(holder.expires_at).to_string(),
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(
        &["OWNER", "SCOPE", "FENCE", "TTL LEFT", "EXPIRES AT"],
        &rows,
    ));
    text
}

pub(crate) async fn inspect(args: InspectArgs) -> Result<(), LockError> {
    let client = connect(&args.client)?;
    let object = ObjectId::new(&args.object)?;
    match client.inspect(&object).await? {
        Some(info) if args.client.json => out_json(&LockBody::from(&info)),
        Some(info) => out(&describe(&info)),
        None if args.client.json => out("null"),
        None => out(&format!("{object} is not locked")),
    }
}

pub(crate) async fn list(args: ListArgs) -> Result<(), LockError> {
    let client = connect(&args.client)?;
    let mut locks = Vec::new();
    let mut query = ListQuery::new(args.prefix.clone(), lockcore::MAX_LIST_LIMIT);
    loop {
        let page = client.list(&query).await?;
        locks.extend(page.locks);
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    if args.client.json {
        /// `lockd list --json`: every page's locks in one list.
        #[derive(Serialize)]
        struct Listing {
            locks: Vec<LockBody>,
        }
        let locks = locks.iter().map(LockBody::from).collect();
        return out_json(&Listing { locks });
    }
    let rows: Vec<Vec<String>> = locks
        .iter()
        .map(|l| {
            vec![
                l.object.to_string(),
                l.mode.to_string(),
                l.holders.len().to_string(),
                l.owner.to_string(),
                l.fence.to_string(),
                shown(l.ttl),
                l.waiters.to_string(),
                l.delay
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |delay| shown(delay.remaining)),
            ]
        })
        .collect();
    out(&table(
        &[
            "OBJECT", "MODE", "HOLDERS", "OWNER", "FENCE", "TTL LEFT", "WAITERS", "DELAY",
        ],
        &rows,
    ))
}

fn event_row(event: &Event) -> Vec<String> {
    vec![
        event.seq.to_string(),
        event
            .time
            .map(|t| humantime::format_rfc3339_millis(t).to_string())
            .unwrap_or_default(),
        event.kind.to_string(),
        event.object.clone(),
        event.owner.clone().unwrap_or_else(|| "-".into()),
        event
            .mode
            .map(|mode| mode.to_string())
            .unwrap_or_else(|| "-".into()),
        event
            .fence
            .map(|f| f.to_string())
            .unwrap_or_else(|| "-".into()),
        event.reason.clone().unwrap_or_default(),
    ]
}

const EVENT_HEADER: [&str; 8] = [
    "SEQ", "TIME", "KIND", "OBJECT", "OWNER", "MODE", "FENCE", "REASON",
];

pub(crate) async fn events(args: EventsArgs) -> Result<(), LockError> {
    let client = connect_http(&args.client)?;
    let as_json = args.client.json;
    let mut last = args.after;
    let mut rows = Vec::new();
    loop {
        let page = client.events(last, crate::EVENTS_PAGE).await?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            last = Some(event.seq);
            if as_json {
                out_json(event)?;
            } else {
                rows.push(event_row(event));
            }
        }
    }
    if !as_json && (!rows.is_empty() || !args.follow) {
        out(&table(&EVENT_HEADER, &rows))?;
    }
    if !args.follow {
        return Ok(());
    }
    let mut stream = client.event_stream(Some(last.unwrap_or(0))).await?;
    while let Some(event) = stream.next().await {
        let event = event?;
        if as_json {
            out_json(&event)?;
        } else {
            out(&event_row(&event).join("  "))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let text = table(
            &["A", "BB"],
            &[
                vec!["long-cell".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A          BB\nlong-cell  x\ns          y");
    }

    /// `--subtree` and `--lock-delay` reach the request; without `--lock-delay` none is asked
    /// for, so the server's default applies.
    #[test]
    fn subtree_and_lock_delay_flags_shape_the_request() {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            acquire: AcquireArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["lockd", "/vol/a", "/vol/b", "--owner", "o", "--ttl", "5s"];
            argv.extend_from_slice(extra);
            let cli = <Cli as clap::Parser>::try_parse_from(argv).expect("valid flags");
            acquire_request(&cli.acquire).expect("valid request")
        };
        let rename = parse(&["--subtree", "--lock-delay", "1500ms"]);
        assert!(rename.objects.iter().all(|s| s.scope == LockScope::Subtree));
        assert_eq!(rename.lock_delay, Duration::from_millis(1500));
        let plain = parse(&[]);
        assert!(plain.objects.iter().all(|s| s.scope == LockScope::Object));
        assert_eq!(plain.lock_delay, Duration::ZERO);
        assert!(<Cli as clap::Parser>::try_parse_from([
            "lockd",
            "/a",
            "--owner",
            "o",
            "--ttl",
            "5s",
            "--lock-delay",
            "soon",
        ])
        .is_err());
    }

    /// An object with only a lock-delay shows it and no holder.
    #[test]
    fn inspect_shows_waiters_and_a_delay_in_force() {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let delay = lockcore::LockDelayInfo {
            owner: OwnerId::new("gone").expect("valid"),
            fence: lockcore::Fence(7),
            mode: LockMode::Exclusive,
            scope: LockScope::Subtree,
            until: at + Duration::from_secs(2),
            remaining: Duration::from_millis(1500),
        };
        let info =
            LockInfo::delayed(ObjectId::new("/vol/a").expect("valid"), delay, at).with_waiters(2);
        let text = describe(&info);
        assert!(text.contains("waiters  2"), "{text}");
        assert!(text.contains("delay    1s 500ms left"), "{text}");
        assert!(
            text.contains("gone's expired subtree exclusive lease"),
            "{text}"
        );
        assert!(text.contains("holders  none"), "{text}");
    }
}
