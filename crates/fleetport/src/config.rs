//! `fleetport up` settings: command-line flags (each also read from a `FLEETPORT_*` variable),
//! the credentials users sign with, and the checks made before anything binds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use fleetport_proto::sigv4::CredentialSet;

/// The access key and secret accepted on loopback when no credentials are configured.
pub const DEFAULT_KEY: &str = "test";

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Address and port of the single listener that serves every AWS API and the registry.
    #[arg(long, env = "FLEETPORT_LISTEN", default_value = "127.0.0.1:4566")]
    pub listen: SocketAddr,

    /// Directory for persistent state (the SQLite database).
    /// Default: $XDG_DATA_HOME/fleetport, else ~/.local/share/fleetport.
    #[arg(long, env = "FLEETPORT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where state is kept: the embedded SQLite database in the data directory (the default),
    /// or a PostgreSQL database (`postgres://user@host:port/db`).
    #[arg(long, env = "FLEETPORT_STORE", hide_env_values = true)]
    pub store: Option<String>,

    /// Where registry blobs are kept: the data directory (the default), or an S3-compatible
    /// object store all replicas share (`s3://bucket[/prefix][?endpoint=http://host:port&region=…]`,
    /// credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN).
    #[arg(long, env = "FLEETPORT_BLOB_STORE", hide_env_values = true)]
    pub blob_store: Option<String>,

    /// The region a request means when its signature does not name one (the CLI's default);
    /// every region a SigV4 scope names is served.
    #[arg(long, env = "FLEETPORT_REGION", default_value = "us-east-1")]
    pub region: String,

    /// AWS account ID used in ARNs (test suites often expect 123456789012).
    #[arg(long, env = "FLEETPORT_ACCOUNT_ID", default_value = "000000000000")]
    pub account_id: String,

    /// AWS shared-credentials file (INI: [profile] with aws_access_key_id and
    /// aws_secret_access_key); every profile's key pair is accepted.
    #[arg(long, env = "FLEETPORT_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,

    /// One extra accepted access key ID (with --secret-access-key from the environment).
    #[arg(long, env = "FLEETPORT_ACCESS_KEY_ID", requires = "secret_access_key")]
    pub access_key_id: Option<String>,

    /// The secret for --access-key-id. Prefer the environment variable: flags show in `ps`.
    #[arg(
        long,
        env = "FLEETPORT_SECRET_ACCESS_KEY",
        hide_env_values = true,
        requires = "access_key_id"
    )]
    pub secret_access_key: Option<String>,

    /// Enable POST /_fleetport/reset, which deletes all state in one call (for test suites).
    #[arg(long, env = "FLEETPORT_ENABLE_RESET")]
    pub enable_reset: bool,

    /// Seconds without a poll after which an agent reports agentConnected false and its instance
    /// gets no new tasks.
    #[arg(long, env = "FLEETPORT_AGENT_TIMEOUT", default_value_t = 60)]
    pub agent_timeout: u64,

    /// Seconds a stopped task stays describable before it is forgotten (ECS: about an hour).
    #[arg(long, env = "FLEETPORT_STOPPED_TASK_RETENTION", default_value_t = 3600)]
    pub stopped_task_retention: u64,

    /// Seconds the managed capacity keeps a stopped task's containers (for `fleetport logs` and
    /// `docker inspect`) before removing them; the ECS agent's default is 3 hours.
    #[arg(long, env = "FLEETPORT_TASK_CLEANUP_WAIT", default_value_t = 10800)]
    pub task_cleanup_wait: u64,

    /// Threads serving load balancer listeners, each with its own connections to targets
    /// (default: one per CPU).
    #[arg(long, env = "FLEETPORT_ELB_WORKERS")]
    pub elb_workers: Option<usize>,

    /// Kernel scheduling of those threads: `batch` (SCHED_BATCH: a worker woken by a packet
    /// does not preempt the client or target that sent it, so fewer context switches when
    /// they share cores) or `normal` (the policy Fleetport was started with).
    #[arg(long, env = "FLEETPORT_ELB_SCHEDULING", default_value = "batch", value_parser = ["batch", "normal"])]
    pub elb_scheduling: String,

    /// Do not run the built-in managed capacity (the FARGATE launch type) on this host's Docker
    /// engine. FARGATE tasks then stay PROVISIONING.
    #[arg(long, env = "FLEETPORT_NO_MANAGED_CAPACITY")]
    pub no_managed_capacity: bool,

    /// Registry host:port used in repositoryUri and proxyEndpoint, so agents on other hosts can
    /// pull. Default: localhost:<port> on loopback, else the listen address.
    #[arg(long, env = "FLEETPORT_REGISTRY_HOST")]
    pub registry_host: Option<String>,

    /// Seconds between registry garbage collections (blobs no image references any more).
    #[arg(long, env = "FLEETPORT_REGISTRY_GC_INTERVAL", default_value_t = 600)]
    pub registry_gc_interval: u64,

    /// Unreferenced blobs younger than this many seconds are kept (pushes upload layers first).
    #[arg(long, env = "FLEETPORT_REGISTRY_GC_GRACE", default_value_t = 3600)]
    pub registry_gc_grace: u64,

    /// Seconds an upload session may go without data before it expires.
    #[arg(long, env = "FLEETPORT_REGISTRY_UPLOAD_TTL", default_value_t = 3600)]
    pub registry_upload_ttl: u64,

    /// Largest accepted AWS API request body, in bytes.
    #[arg(long, env = "FLEETPORT_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Bytes of AWS API request bodies held in memory at once, over all requests; a request
    /// that would go over waits (and gets ThrottlingException if it waits too long).
    #[arg(long, env = "FLEETPORT_MAX_INFLIGHT_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_inflight_body_bytes: usize,

    /// Seconds a client of the API listener has to send a request's line and headers, counted
    /// from when the connection starts waiting for one: slow or idle connections are closed.
    /// Also the most an API request body may pause between two reads.
    #[arg(long, env = "FLEETPORT_HEADER_READ_TIMEOUT", default_value_t = 30)]
    pub header_read_timeout: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "refusing to listen on {0} with the default test/test credentials: they are accepted only on loopback. \
         Configure credentials with --credentials-file or FLEETPORT_ACCESS_KEY_ID/FLEETPORT_SECRET_ACCESS_KEY."
    )]
    DefaultCredentialsOffLoopback(SocketAddr),
    #[error("cannot read credentials file {path}: {reason}")]
    CredentialsFile { path: PathBuf, reason: String },
    #[error("invalid account ID '{0}': it must be 12 digits")]
    AccountId(String),
    #[error("invalid region '{0}': use a name like us-east-1")]
    Region(String),
    #[error("--store must be 'sqlite' or a postgres:// URL, not '…{0}'")]
    Store(String),
    #[error("{0}")]
    BlobStore(String),
    #[error("no data directory: set --data-dir or HOME")]
    NoDataDir,
}

/// Settings checked and resolved, ready to build the server from.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A PostgreSQL connection string; None for the embedded SQLite store.
    pub postgres: Option<String>,
    /// The object store registry blobs are published to; None for the data directory.
    pub blob_store: Option<fleetport_ecr::shelf::Remote>,
    pub region: String,
    pub account_id: String,
    pub credentials: CredentialSet,
    pub using_default_credentials: bool,
    pub enable_reset: bool,
    pub managed_capacity: bool,
    pub agent_timeout: std::time::Duration,
    pub stopped_task_retention: std::time::Duration,
    pub task_cleanup_wait: std::time::Duration,
    pub elb_workers: usize,
    pub elb_scheduling: fleetport_elb::plane::sched::Scheduling,
    pub max_body_bytes: usize,
    pub max_inflight_body_bytes: usize,
    pub header_read_timeout: std::time::Duration,
    pub registry_host: Option<String>,
    pub registry_gc_interval: std::time::Duration,
    pub registry_gc_grace: std::time::Duration,
    pub registry_upload_ttl: std::time::Duration,
}

impl UpArgs {
    pub fn resolve(self) -> Result<Config, ConfigError> {
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::AccountId(self.account_id));
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::Region(self.region));
        }
        let mut credentials = CredentialSet::new();
        if let Some(path) = &self.credentials_file {
            load_credentials_file(path, &mut credentials)?;
        }
        if let (Some(k), Some(s)) = (&self.access_key_id, &self.secret_access_key) {
            credentials.insert(k.clone(), s.clone());
            // The flag's secret, over the file's, is the one 12-digit keys sign with.
            credentials.allow_account_keys(s.clone());
        }
        let using_default_credentials = credentials.is_empty();
        if using_default_credentials {
            if !self.listen.ip().is_loopback() {
                return Err(ConfigError::DefaultCredentialsOffLoopback(self.listen));
            }
            credentials.insert(DEFAULT_KEY, DEFAULT_KEY);
            credentials.allow_account_keys(DEFAULT_KEY);
        }
        let data_dir = match self.data_dir {
            Some(d) => d,
            None => default_data_dir().ok_or(ConfigError::NoDataDir)?,
        };
        let postgres = match self.store.as_deref() {
            None | Some("sqlite") => None,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(url.to_string())
            }
            Some(other) => {
                return Err(ConfigError::Store(
                    other.split('@').next_back().unwrap_or_default().to_string(),
                ));
            }
        };
        let blob_store = match self.blob_store.as_deref() {
            None | Some("") => None,
            Some(url) => {
                Some(fleetport_ecr::shelf::Remote::parse(url).map_err(ConfigError::BlobStore)?)
            }
        };
        Ok(Config {
            listen: self.listen,
            data_dir,
            postgres,
            blob_store,
            region: self.region,
            account_id: self.account_id,
            credentials,
            using_default_credentials,
            enable_reset: self.enable_reset,
            managed_capacity: !self.no_managed_capacity,
            agent_timeout: std::time::Duration::from_secs(self.agent_timeout.max(1)),
            stopped_task_retention: std::time::Duration::from_secs(self.stopped_task_retention),
            task_cleanup_wait: std::time::Duration::from_secs(self.task_cleanup_wait),
            elb_workers: self
                .elb_workers
                .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
                .unwrap_or(1)
                .clamp(1, 256),
            elb_scheduling: if self.elb_scheduling == "normal" {
                fleetport_elb::plane::sched::Scheduling::Normal
            } else {
                fleetport_elb::plane::sched::Scheduling::Batch
            },
            max_body_bytes: self.max_body_bytes,
            // One largest body must always fit, or such a request could never be served.
            max_inflight_body_bytes: self.max_inflight_body_bytes.max(self.max_body_bytes),
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout.max(1)),
            registry_host: self.registry_host,
            registry_gc_interval: std::time::Duration::from_secs(self.registry_gc_interval.max(1)),
            registry_gc_grace: std::time::Duration::from_secs(self.registry_gc_grace),
            registry_upload_ttl: std::time::Duration::from_secs(self.registry_upload_ttl.max(1)),
        })
    }
}

fn default_data_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("fleetport"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/fleetport"))
}

/// Reads every `aws_access_key_id`/`aws_secret_access_key` pair of an AWS credentials file.
pub fn load_credentials_file(path: &Path, into: &mut CredentialSet) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::CredentialsFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let before = into.len();
    let mut profile = Profile::default();
    let mut flush = |p: &mut Profile| -> Result<(), ConfigError> {
        match std::mem::take(p) {
            Profile {
                key: Some(k),
                secret: Some(s),
                account,
            } => {
                if into.account_keys_secret().is_none() && into.is_empty() {
                    // The first profile's secret is the one 12-digit keys sign with.
                    into.allow_account_keys(s.clone());
                }
                match account {
                    Some(a) if !fleetport_proto::sigv4::is_account_id(&a) => {
                        Err(err(format!("aws_account_id '{a}' is not 12 digits")))
                    }
                    Some(a) => {
                        into.insert_for_account(k, s, a);
                        Ok(())
                    }
                    None => {
                        into.insert(k, s);
                        Ok(())
                    }
                }
            }
            Profile {
                key: None,
                secret: None,
                ..
            } => Ok(()),
            _ => Err(err(
                "a profile has an access key without a secret, or a secret without a key".into(),
            )),
        }
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            flush(&mut profile)?;
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(err(format!("line {}: expected 'name = value'", n + 1)));
        };
        let value = Some(value.trim().to_string());
        match name.trim() {
            "aws_access_key_id" => profile.key = value,
            "aws_secret_access_key" => profile.secret = value,
            // botocore's name for the account a profile's credentials belong to.
            "aws_account_id" => profile.account = value,
            _ => {}
        }
    }
    flush(&mut profile)?;
    if into.len() == before {
        return Err(err(
            "it contains no aws_access_key_id/aws_secret_access_key pair".into(),
        ));
    }
    Ok(())
}

/// One profile of a shared-credentials file as it is read.
#[derive(Default)]
struct Profile {
    key: Option<String>,
    secret: Option<String>,
    account: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_profile() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("credentials");
        std::fs::write(&p, "[default]\naws_access_key_id = AK1\naws_secret_access_key = s1\n\n[ci]\n# comment\naws_access_key_id=AK2\naws_secret_access_key=s2\nregion=x\n").unwrap();
        let mut c = CredentialSet::new();
        load_credentials_file(&p, &mut c).unwrap();
        assert_eq!((c.secret("AK1"), c.secret("AK2")), (Some("s1"), Some("s2")));
        std::fs::write(&p, "[default]\naws_access_key_id = AK1\n").unwrap();
        assert!(load_credentials_file(&p, &mut CredentialSet::new()).is_err());
        std::fs::write(&p, "[a]\naws_access_key_id = AK1\naws_secret_access_key = s1\n[b]\naws_access_key_id = AK2\naws_secret_access_key = s2\naws_account_id = 111111111111\n").unwrap();
        let mut c = CredentialSet::new();
        load_credentials_file(&p, &mut c).unwrap();
        assert_eq!(
            (c.account("AK1"), c.account("AK2")),
            (None, Some("111111111111"))
        );
        // A 12-digit key is its own account's root and signs with the first profile's secret.
        assert_eq!(c.secret("222222222222"), Some("s1"));
        assert_eq!(c.account("222222222222"), Some("222222222222"));
        assert_eq!(c.secret("22222222222x"), None);
        std::fs::write(
            &p,
            "[a]\naws_access_key_id = AK1\naws_secret_access_key = s1\naws_account_id = 12\n",
        )
        .unwrap();
        assert!(load_credentials_file(&p, &mut CredentialSet::new()).is_err());
    }
}
