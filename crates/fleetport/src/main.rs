//! The `fleetport` binary: parses the command line, builds the store, the gateway and the
//! services, binds the listener and runs until SIGINT/SIGTERM. Wiring only.

mod agent_cmd;
mod alloc;
mod config;
mod links;
mod listen;
mod server;
mod tenants;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetport_proto::sigv4::Verifier;
use fleetport_proto::{Gateway, GatewayConfig};
use fleetport_store::Store;
use fleetport_store::sqlite::SqliteStore;

use crate::config::{Config, UpArgs};

#[derive(Debug, Parser)]
#[command(
    name = "fleetport",
    version,
    about = "ECS, ECR and Elastic Load Balancing on your own machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the all-in-one node: one endpoint for the AWS APIs, with persistent state.
    Up(UpArgs),
    /// Run one container instance ("EC2" capacity) that joins a cluster and runs its tasks on
    /// the local Docker engine. Signs with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
    Agent(agent_cmd::AgentArgs),
    /// Print the logs of a task's containers that ran on this host.
    Logs(agent_cmd::LogsArgs),
    /// Interrupt a FARGATE_SPOT task as Fargate Spot's two-minute warning would (targets
    /// deregistered, SIGTERM, stopCode SpotInterruption), to prove a service survives it.
    InterruptSpot(agent_cmd::InterruptSpotArgs),
}

/// EX_USAGE: bad configuration, reported before anything binds.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    without_huge_pages();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEETPORT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Up(args) => {
            let config = match args.resolve() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fleetport: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            finish(run(config))
        }
        Command::Agent(args) => finish(block_on(agent_cmd::run_agent(args))),
        Command::Logs(args) => finish(block_on(agent_cmd::run_logs(args))),
        Command::InterruptSpot(args) => finish(block_on(agent_cmd::run_interrupt_spot(args))),
    }
}

/// Transparent huge pages off for this process. mimalloc advises huge pages for its arenas, and
/// then each 2 MiB page a small heap touches counts whole in RSS: an idle `fleetport up` held
/// 16 MiB of them for a few MiB of live data. mimalloc reads its `MIMALLOC_ALLOW_THP` setting at
/// its first allocation, before `main`, so the process runs itself again once with the
/// setting in its environment (same PID, arguments and `argv[0]`; about a millisecond). A
/// setting the user chose is kept. If that exec fails, the kernel's per-process switch still
/// keeps later pages small.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        const SETTING: &str = "MIMALLOC_ALLOW_THP";
        if std::env::var_os(SETTING).is_none()
            && let Ok(exe) = std::env::current_exe()
        {
            let mut args = std::env::args_os();
            let mut again = std::process::Command::new(exe);
            if let Some(arg0) = args.next() {
                again.arg0(arg0);
            }
            // Returns only if the exec failed.
            let _ = again.args(args).env(SETTING, "0").exec();
        }
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetport: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(f)
}

fn run(config: Config) -> anyhow::Result<()> {
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(config))
}

/// The state store the process opened, closed again at shutdown (its queued writes done).
enum Opened {
    /// Alone on its store, the process always leads.
    Sqlite(Arc<SqliteStore>, tokio::sync::watch::Sender<Option<i64>>),
    /// With this process's part in the election of the replica that runs the singleton loops.
    Postgres(
        Arc<fleetport_store::pg::PgStore>,
        Box<fleetport_store::pg::Leadership>,
    ),
}

impl Opened {
    async fn open(config: &Config) -> anyhow::Result<Self> {
        let Some(url) = config.postgres.clone() else {
            let sqlite = SqliteStore::open(&config.data_dir).with_context(|| {
                format!("opening the state store in {}", config.data_dir.display())
            })?;
            return Ok(Self::Sqlite(
                Arc::new(sqlite),
                tokio::sync::watch::Sender::new(Some(0)),
            ));
        };
        let holder = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        // The PostgreSQL client blocks: it runs off the async runtime's threads.
        tokio::task::spawn_blocking(move || {
            let store = fleetport_store::pg::PgStore::open(&url)?;
            let leadership = fleetport_store::pg::Leadership::join(&url, &holder)?;
            Ok::<_, fleetport_store::StoreError>(Self::Postgres(
                Arc::new(store),
                Box::new(leadership),
            ))
        })
        .await
        .context("opening the PostgreSQL store")?
        .context("opening the PostgreSQL store")
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(s, _) => s.clone(),
            Self::Postgres(p, _) => p.clone(),
        }
    }

    /// The leader epoch while this process runs the loops that must run once, None while
    /// another replica does. Alone on its store the process always leads, in an epoch 0 that
    /// fences nothing (no other writer exists).
    fn leader(&self) -> tokio::sync::watch::Receiver<Option<i64>> {
        match self {
            Self::Sqlite(_, always) => always.subscribe(),
            Self::Postgres(_, leadership) => leadership.watch(),
        }
    }

    /// The newest leader epoch seen on the store (always 0 for a process alone on it).
    fn epochs(&self) -> tokio::sync::watch::Receiver<i64> {
        match self {
            Self::Sqlite(..) => tokio::sync::watch::Sender::new(0).subscribe(),
            Self::Postgres(_, leadership) => leadership.epochs(),
        }
    }

    async fn close(self) {
        match self {
            Self::Sqlite(s, _) => s.close(),
            Self::Postgres(p, leadership) => {
                let _ = tokio::task::spawn_blocking(move || {
                    leadership.resign();
                    p.close();
                })
                .await;
            }
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    fleetport_store::datadir::prepare(&config.data_dir)
        .with_context(|| format!("preparing {}", config.data_dir.display()))?;
    fleetport_store::set_after_reset(alloc::release_free_memory);
    let opened = Opened::open(&config).await?;
    let store: Arc<dyn Store> = opened.store();
    let leader = opened.leader();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    let registry_host = config
        .registry_host
        .clone()
        .unwrap_or_else(|| default_registry_host(bound));
    let mut gateway = Gateway::new(
        GatewayConfig {
            region: config.region.clone(),
            account_id: config.account_id.clone(),
        },
        Verifier::new(config.credentials.clone()),
    );
    let sealer = Arc::new(
        fleetport_store::seal::Sealer::open_dir(&config.data_dir)
            .context("reading the secrets key")?,
    );
    check_secrets_key(&*store, &sealer).await?;
    if let Some(blobs) = &config.blob_store {
        blobs
            .check()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("opening the registry's blob store")?;
    }
    // IAM (global, keyed by account): its access keys are known to the verifier, its policies
    // decide every call that a non-root key signs.
    let iam = fleetport_iam::Iam::open(store.clone(), sealer.clone())
        .map_err(|e| anyhow::anyhow!("loading IAM: {e}"))?;
    gateway.verifier().set_source(Arc::new(iam.clone()));
    gateway.set_authorizer(Arc::new(iam.clone()));
    gateway.serve(Arc::new(iam.clone()));
    gateway.serve(Arc::new(fleetport_iam::Sts(iam.clone())));
    // The regional services, one set per account and region, behind one data plane.
    let fleet = fleetport_elb::plane::fleet::Fleet::new(Default::default());
    let tenants = tenants::Tenants::open(tenants::Parts {
        base: store.clone(),
        config: config.clone(),
        iam: iam.clone(),
        sealer,
        fleet: fleet.clone(),
        registry_host,
        endpoint: own_endpoint(bound),
        leader: leader.clone(),
        epochs: opened.epochs(),
    })
    .await
    .with_context(|| format!("opening the regions in {}", config.data_dir.display()))?;
    gateway.serve(Arc::new(tenants::Regional::new(tenants.clone(), |t| {
        &t.agent_api
    })));
    gateway.serve(Arc::new(tenants::Regional::new(tenants.clone(), |t| {
        &t.ecs
    })));
    gateway.serve(Arc::new(tenants::Regional::new(tenants.clone(), |t| {
        &t.ecr
    })));
    gateway.serve(Arc::new(tenants::Regional::new(tenants.clone(), |t| {
        &t.acm
    })));
    gateway.serve(Arc::new(tenants::Regional::new(tenants.clone(), |t| {
        &t.elb
    })));
    let connections = connection_budget();
    let cookie_key = fleetport_store::datadir::key(&config.data_dir, "elb-cookie.key")
        .context("reading the load balancer cookie key")?;
    let elb_plane = tokio::spawn(fleet.clone().run(fleetport_elb::plane::PlaneOptions {
        workers: config.elb_workers,
        scheduling: config.elb_scheduling,
        max_connections: connections,
        cookie_key: fleetport_elb::plane::sticky::CookieKey(cookie_key),
    }));
    // Other replicas' changes reach what this process keeps in memory beside the store.
    let follower = store.remote_changes().map(|mut changes| {
        let (tenants, iam) = (tenants.clone(), iam.clone());
        let store_for_follower = store.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                // A burst of changes is followed once.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                changes.borrow_and_update();
                let changed = store_for_follower.take_remote_collections();
                // IAM is global: its collections are never scoped to a tenant.
                if changed.iter().any(|c| c.is_empty() || c.starts_with("iam."))
                    && let Err(e) = iam.refresh()
                {
                    tracing::warn!(error = %e, "could not reload IAM after another replica's change");
                }
                tenants.follow_remote(&changed).await;
            }
        })
    });
    let last_used = tokio::spawn(iam.clone().run_last_used(std::time::Duration::from_secs(5)));
    let state = server::AppState {
        gateway: Arc::new(gateway),
        tenants: tenants.clone(),
        fleet,
        store: store.clone(),
        enable_reset: config.enable_reset,
        iam: iam.clone(),
        leader,
        max_body_bytes: config.max_body_bytes,
        bodies: server::BodyBudget::new(config.max_inflight_body_bytes, config.header_read_timeout),
    };
    // At shutdown, long polls must not hold the listener open for their 20 s: stop the
    // loops and the in-process agents, then answer every waiting poll.
    let at_shutdown = tenants.clone();
    let shutdown = async move {
        shutdown_signal().await;
        at_shutdown.shutdown();
    };
    print_banner(&config, bound);
    let limits = listen::ConnLimits {
        max_connections: connections,
        header_read_timeout: config.header_read_timeout,
    };
    listen::serve(listener, server::router(state), limits, shutdown).await;
    tracing::info!("shutting down");
    tenants.shutdown();
    elb_plane.abort();
    last_used.abort();
    if let Some(f) = follower {
        f.abort();
    }
    if let Err(e) = iam.flush_last_used().await {
        tracing::warn!(error = %e, "could not record access keys' last use");
    }
    drop(tenants);
    drop(store);
    opened.close().await;
    Ok(())
}

/// Refuses a secrets key other than the one the stored secrets were sealed with: replicas on one
/// database must share `secrets.key`, and a data directory must keep its own, or secrets stored
/// before (IAM keys, certificates' private keys) would not open. A sealed canary in the store
/// tells, without keeping anything about the key itself.
async fn check_secrets_key(
    store: &dyn Store,
    sealer: &Arc<fleetport_store::seal::Sealer>,
) -> anyhow::Result<()> {
    use fleetport_store::{ReadTxnExt, StoreError, WriteTxnExt};
    const COLLECTION: &str = "fleetport.sealer";
    let stored: Option<String> =
        fleetport_store::read(store, |t| t.get_json::<String>(COLLECTION, "canary"))?;
    match stored {
        Some(canary) => {
            sealer.open(COLLECTION, &canary).map_err(|_| {
                anyhow::anyhow!(
                    "this data directory's secrets.key is not the one the stored secrets were sealed with; \
                     replicas on one database must all have the same secrets.key (copy it from another replica)"
                )
            })?;
        }
        None => {
            let canary = sealer
                .seal(COLLECTION, b"fleetport")
                .map_err(|e| anyhow::anyhow!("sealing the canary: {e}"))?;
            fleetport_store::write::<_, StoreError>(store, move |t| {
                // Another replica may have written one meanwhile: the first stays.
                if t.get_json::<String>(COLLECTION, "canary")?.is_none() {
                    t.put_json(COLLECTION, "canary", &canary)?;
                }
                Ok(())
            })
            .await?;
        }
    }
    Ok(())
}

/// Where in-process clients (the managed capacity) reach this listener.
fn own_endpoint(bound: std::net::SocketAddr) -> String {
    if bound.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", bound.port())
    } else {
        format!("http://{bound}")
    }
}

/// Raises the soft open-file limit to the hard one: every connection is a descriptor, and a
/// default soft limit (often 1024) would let a few hundred idle clients starve the store and
/// the registry of files.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// Connections the API listener, and separately the load balancers' ports, may hold open at
/// once: a quarter of the open-file limit each (a proxied connection may hold a second
/// descriptor towards its target), leaving the rest to the store, the registry and Docker.
fn connection_budget() -> usize {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(limit / 4)
        .unwrap_or(usize::MAX)
        .clamp(16, 1 << 20)
}

/// What image names use for this registry: `localhost:<port>` on loopback (Docker allows plain
/// HTTP there without configuration), else the bound address.
fn default_registry_host(bound: std::net::SocketAddr) -> String {
    if bound.ip().is_loopback() {
        format!("localhost:{}", bound.port())
    } else {
        bound.to_string()
    }
}

fn print_banner(config: &Config, bound: std::net::SocketAddr) {
    let endpoint = if bound.ip().is_loopback() && bound.is_ipv4() {
        format!("http://localhost:{}", bound.port())
    } else {
        format!("http://{bound}")
    };
    let (key, secret) = if config.using_default_credentials {
        (
            config::DEFAULT_KEY.to_string(),
            config::DEFAULT_KEY.to_string(),
        )
    } else {
        let keys: Vec<&str> = config.credentials.access_keys().collect();
        (keys.join(", "), "<the secret you configured>".to_string())
    };
    let reset = if config.enable_reset {
        format!("POST {endpoint}/_fleetport/reset")
    } else {
        "off (--enable-reset turns on POST /_fleetport/reset)".to_string()
    };
    let text = format!(
        "Fleetport {version} is ready.\n  endpoint:    {endpoint}\n  listening:   {bound}\n  region:      {region}\n  account:     {account}\n  access key:  {key}\n  data dir:    {data}\n  state:       {state}\n  blobs:       {blobs}\n  reset:       {reset}\n\nUse it with:\n  export AWS_ACCESS_KEY_ID={key_export} AWS_SECRET_ACCESS_KEY={secret} AWS_DEFAULT_REGION={region}\n  export AWS_ENDPOINT_URL={endpoint}\n",
        version = env!("CARGO_PKG_VERSION"),
        region = config.region,
        account = config.account_id,
        data = config.data_dir.display(),
        // The URL may hold a password: only where the database is.
        state = match &config.postgres {
            Some(url) => format!(
                "PostgreSQL at {}",
                url.rsplit('@').next().unwrap_or("the configured server")
            ),
            None => "SQLite in the data dir".to_string(),
        },
        blobs = match &config.blob_store {
            Some(remote) => remote.label().to_string(),
            None => "in the data dir".to_string(),
        },
        key_export = key.split(", ").next().unwrap_or_default(),
    );
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
