//! Accounts and regions. A tenant is one (account, region): its own ECS, ECR, ACM and ELB, each
//! over the tenant's view of the store ([`fleetport_store::scoped::Scoped`]), with its own
//! registry directory, background loops and managed capacity. IAM and STS are global and keyed
//! by account inside IAM; the ELB data plane is one for all tenants (`plane::fleet`).
//!
//! The default tenant (`--account-id`, `--region`) keeps the unprefixed store collections and
//! the data directory's own `registry/`, exactly where builds before tenancy kept them, so an
//! older data directory is opened as it is. Other tenants appear on their first request and are
//! recorded (`fleetport.tenant`) so their loops start again after a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fleetport_acm::Acm;
use fleetport_ecr::Ecr;
use fleetport_ecs::Ecs;
use fleetport_ecs::agent_api::AgentApi;
use fleetport_elb::Elb;
use fleetport_elb::plane::fleet::Fleet;
use fleetport_proto::{AwsError, BoxFuture, RequestContext, Service};
use fleetport_store::scoped::Scoped;
use fleetport_store::{ReadTxnExt, Store, StoreError, WriteTxnExt};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use crate::config::Config;

/// Where tenants other than the default are recorded (key `<account>/<region>`).
const TENANTS: &str = "fleetport.tenant";

/// The account and region the unprefixed collections belong to.
const OWNER: &str = "fleetport.unprefixed";

/// At most this many tenants: each runs loops and holds memory, and a signed client could
/// otherwise name regions without end.
const MAX_TENANTS: usize = 256;

/// One account in one region.
pub struct Tenant {
    pub account: String,
    pub region: String,
    pub ecs: Ecs,
    pub agent_api: AgentApi,
    pub ecr: Ecr,
    pub acm: Acm,
    pub elb: Elb,
    recorded: AtomicBool,
    loops: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Tenant {
    fn stop(&self) {
        for l in self.loops.lock().drain(..) {
            l.abort();
        }
    }
}

/// What every tenant is built from.
pub struct Parts {
    pub base: Arc<dyn Store>,
    pub config: Config,
    pub iam: fleetport_iam::Iam,
    pub sealer: Arc<fleetport_store::seal::Sealer>,
    pub fleet: Fleet,
    pub registry_host: String,
    /// Where the managed capacity reaches the API.
    pub endpoint: String,
    /// The leader epoch while this process runs the loops that must run once.
    pub leader: tokio::sync::watch::Receiver<Option<i64>>,
    /// The newest leader epoch this process has seen on the store (its own or another
    /// replica's), which agents' assignments carry as a fencing token.
    pub epochs: tokio::sync::watch::Receiver<i64>,
}

/// Every tenant, created on first use.
pub struct Tenants {
    base: Arc<dyn Store>,
    config: Config,
    /// The tenant whose state is the unprefixed collections and `<data-dir>/registry/`.
    owner: (String, String),
    iam: fleetport_iam::Iam,
    sealer: Arc<fleetport_store::seal::Sealer>,
    fleet: Fleet,
    registry_host: String,
    /// Where the managed capacity reaches the API.
    endpoint: String,
    /// Account → region → tenant (looked up by `&str` on every call, without allocating).
    map: RwLock<HashMap<String, HashMap<String, Arc<Tenant>>>>,
    default: Arc<Tenant>,
    /// The leader epoch while this process runs the loops that must run once (it leads, or it
    /// is alone).
    leader: tokio::sync::watch::Receiver<Option<i64>>,
    epochs: tokio::sync::watch::Receiver<i64>,
}

impl Tenants {
    /// Opens the default tenant and every recorded one, bringing records of older builds up to
    /// date in each.
    pub async fn open(parts: Parts) -> anyhow::Result<Arc<Self>> {
        let Parts {
            base,
            config,
            iam,
            sealer,
            fleet,
            registry_host,
            endpoint,
            leader,
            epochs,
        } = parts;
        let owner = unprefixed_owner(&*base, &config).await?;
        let default = build(
            &base,
            &config,
            &owner,
            &iam,
            &sealer,
            &fleet,
            &registry_host,
            &epochs,
            &config.account_id,
            &config.region,
        )?;
        let tenants = Arc::new(Self {
            base: base.clone(),
            config,
            owner,
            iam,
            sealer,
            fleet,
            registry_host,
            endpoint,
            map: RwLock::default(),
            default: default.clone(),
            leader,
            epochs,
        });
        tenants
            .map
            .write()
            .entry(default.account.clone())
            .or_default()
            .insert(default.region.clone(), default.clone());
        // The data the unprefixed collections hold is served even when the flags now name
        // another default.
        let (owner_account, owner_region) = tenants.owner.clone();
        tenants
            .get_or_open(&owner_account, &owner_region, false)
            .map_err(|e| {
                anyhow::anyhow!("opening {owner_account} in {owner_region}: {}", e.message)
            })?;
        let known: Vec<(String, Value)> =
            fleetport_store::read(&*base, |t| t.scan_json(TENANTS, "", None, MAX_TENANTS))?;
        for (key, _) in known {
            let Some((account, region)) = key.split_once('/') else {
                continue;
            };
            let t = tenants
                .get_or_open(account, region, false)
                .map_err(|e| anyhow::anyhow!("opening {account} in {region}: {}", e.message))?;
            t.recorded.store(true, Ordering::Relaxed);
        }
        let all = tenants.all();
        for t in all {
            migrate(&t).await?;
            tenants.start_loops(&t);
        }
        Ok(tenants)
    }

    pub fn default_tenant(&self) -> &Arc<Tenant> {
        &self.default
    }

    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.map
            .read()
            .values()
            .flat_map(|regions| regions.values().cloned())
            .collect()
    }

    /// The tenant if it exists.
    pub fn existing(&self, account: &str, region: &str) -> Option<Arc<Tenant>> {
        self.map.read().get(account)?.get(region).cloned()
    }

    /// The tenant, created (with its loops running) if it is new.
    pub fn get(&self, account: &str, region: &str) -> Result<Arc<Tenant>, AwsError> {
        self.get_or_open(account, region, true)
    }

    fn get_or_open(
        &self,
        account: &str,
        region: &str,
        start_loops: bool,
    ) -> Result<Arc<Tenant>, AwsError> {
        if let Some(t) = self.existing(account, region) {
            return Ok(t);
        }
        let mut map = self.map.write();
        if let Some(t) = map.get(account).and_then(|r| r.get(region)) {
            return Ok(t.clone());
        }
        if map.values().map(HashMap::len).sum::<usize>() >= MAX_TENANTS {
            return Err(AwsError::client(
                "LimitExceededException",
                format!("This endpoint already serves {MAX_TENANTS} account and region pairs."),
            ));
        }
        let t = build(
            &self.base,
            &self.config,
            &self.owner,
            &self.iam,
            &self.sealer,
            &self.fleet,
            &self.registry_host,
            &self.epochs,
            account,
            region,
        )
        .map_err(|e| {
            tracing::error!(account, region, error = %e, "could not open a region");
            AwsError::internal()
        })?;
        map.entry(account.to_string())
            .or_default()
            .insert(region.to_string(), t.clone());
        drop(map);
        // Opened at start, tenants run their loops once migrated; a new one has nothing to migrate.
        if start_loops {
            self.start_loops(&t);
            tracing::info!(account, region, "serving a new account and region");
        }
        Ok(t)
    }

    /// Records the tenant (once) before the first write into it, so its loops run again after
    /// a restart.
    pub async fn record(&self, t: &Tenant) -> Result<(), AwsError> {
        if t.recorded.load(Ordering::Relaxed) {
            return Ok(());
        }
        let key = format!("{}/{}", t.account, t.region);
        fleetport_store::write::<_, StoreError>(&*self.base, move |txn| {
            txn.put_json(TENANTS, &key, &serde_json::json!({}))?;
            Ok(())
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not record a region");
            AwsError::internal()
        })?;
        t.recorded.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// After a reset emptied the store: every tenant forgets what it held in memory and will be
    /// recorded again by its next request.
    pub async fn after_reset(&self) {
        if let Err(e) = record_owner(&*self.base, &self.owner).await {
            tracing::error!(error = %e, "could not record which account and region the unprefixed state is");
        }
        for t in self.all() {
            t.elb.forget_all().await;
            if !self.is_owner(&t) {
                t.recorded.store(false, Ordering::Relaxed);
            }
        }
    }

    fn is_owner(&self, t: &Tenant) -> bool {
        t.account == self.owner.0 && t.region == self.owner.1
    }

    /// Stops every tenant's loops and answers the agents' waiting polls.
    pub fn shutdown(&self) {
        for t in self.all() {
            t.stop();
            t.ecs.wake_agents();
        }
    }

    /// Runs the tenant's singleton loops whenever this process leads (always, on SQLite).
    fn start_loops(&self, t: &Arc<Tenant>) {
        let mut leader = self.leader.clone();
        let tenant = t.clone();
        let config = self.config.clone();
        let endpoint = self.endpoint.clone();
        // What the owner tenant's managed containers were labelled before tenancy.
        let instance_id = if self.is_owner(t) {
            "fargate".to_string()
        } else {
            format!("fargate-{}-{}", t.account, t.region)
        };
        let supervisor = tokio::spawn(async move {
            loop {
                let epoch = loop {
                    if let Some(epoch) = *leader.borrow_and_update() {
                        break epoch;
                    }
                    if leader.changed().await.is_err() {
                        return;
                    }
                };
                // Dropped (aborting the loops) on losing leadership, or with this task.
                let _running =
                    AbortAll(singletons(&tenant, &config, &endpoint, &instance_id, epoch));
                loop {
                    if leader.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    if *leader.borrow_and_update() != Some(epoch) {
                        break;
                    }
                }
                tracing::info!(account = %tenant.account, region = %tenant.region, epoch, "no longer leading in this epoch: this region's loops stopped");
            }
        });
        t.loops.lock().push(supervisor.abort_handle());
    }

    /// After other replicas changed the `changed` collections (the empty name: everything):
    /// tenants they created are opened here too, and what each tenant keeps in memory follows
    /// where its collections moved: the load balancers' configuration (ELB and certificates),
    /// and for ECS the waiting agent polls and the service scheduler's next round.
    pub async fn follow_remote(&self, changed: &[String]) {
        let all = changed.iter().any(String::is_empty);
        if all || changed.iter().any(|c| c == TENANTS) {
            let known: Result<Vec<(String, Value)>, StoreError> =
                fleetport_store::read(&*self.base, |t| t.scan_json(TENANTS, "", None, MAX_TENANTS));
            for (key, _) in known.unwrap_or_default() {
                if let Some((account, region)) = key.split_once('/')
                    && self.existing(account, region).is_none()
                    && let Ok(t) = self.get(account, region)
                {
                    t.recorded.store(true, Ordering::Relaxed);
                }
            }
        }
        for t in self.all() {
            // The tenant's collections: unprefixed for the owner, `@account/region/…` otherwise.
            let scope = format!("@{}/{}/", t.account, t.region);
            let owner = self.is_owner(&t);
            let mine: Vec<&str> = changed
                .iter()
                .filter_map(|c| match c.strip_prefix(&scope) {
                    Some(rest) => Some(rest),
                    None if owner && !c.starts_with('@') => Some(c.as_str()),
                    None => None,
                })
                .collect();
            let moved = |service: &str| all || mine.iter().any(|c| c.starts_with(service));
            if (moved("elb.") || moved("acm."))
                && let Err(e) = t.elb.reload().await
            {
                tracing::warn!(error = %e, "could not reload the load balancers after another replica's change");
            }
            if moved("ecs.") {
                t.ecs.wake_agents();
                // A service another replica created or updated converges now, not at the next
                // idle round of this replica's scheduler (if it leads).
                t.ecs.nudge();
            }
        }
    }
}

/// Aborts its tasks when dropped.
struct AbortAll(Vec<tokio::task::AbortHandle>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// The loops of a tenant that must run on one replica only: the service scheduler, expiry,
/// registry GC, ELB maintenance (draining, instance addresses) and the managed capacity. Their
/// store writes carry the leader `epoch` as a fencing token, so once another replica leads
/// they fail rather than overwrite its decisions, even before this one notices.
fn singletons(
    t: &Arc<Tenant>,
    c: &Config,
    endpoint: &str,
    instance_id: &str,
    epoch: i64,
) -> Vec<tokio::task::AbortHandle> {
    use fleetport_store::fence::fenced;
    let mut loops = vec![
        tokio::spawn(fenced(epoch, t.elb.clone().run_maintenance())).abort_handle(),
        tokio::spawn(fenced(
            epoch,
            t.ecr
                .clone()
                .run_gc(c.registry_gc_interval, c.registry_gc_grace),
        ))
        .abort_handle(),
        tokio::spawn(fenced(epoch, t.ecs.clone().run_scheduler())).abort_handle(),
        tokio::spawn(fenced(
            epoch,
            expire_stopped_tasks(t.ecs.clone(), c.stopped_task_retention),
        ))
        .abort_handle(),
    ];
    if c.managed_capacity {
        loops.push(
            tokio::spawn(fenced(
                epoch,
                run_managed_capacity(
                    c.clone(),
                    endpoint.to_string(),
                    t.account.clone(),
                    t.region.clone(),
                    instance_id.to_string(),
                ),
            ))
            .abort_handle(),
        );
    }
    loops
}

/// The services of one tenant over its part of the store.
#[allow(clippy::too_many_arguments)]
fn build(
    base: &Arc<dyn Store>,
    config: &Config,
    owner: &(String, String),
    iam: &fleetport_iam::Iam,
    sealer: &Arc<fleetport_store::seal::Sealer>,
    fleet: &Fleet,
    registry_host: &str,
    epochs: &tokio::sync::watch::Receiver<i64>,
    account: &str,
    region: &str,
) -> anyhow::Result<Arc<Tenant>> {
    use anyhow::Context;
    let is_default = account == owner.0 && region == owner.1;
    let scope = format!("{account}/{region}");
    let store: Arc<dyn Store> = Arc::new(Scoped::new(
        base.clone(),
        (!is_default).then_some(scope.as_str()),
    ));
    let dir: PathBuf = if is_default {
        config.data_dir.clone()
    } else {
        let all = config.data_dir.join("tenants");
        fleetport_store::datadir::prepare(&all)
            .with_context(|| format!("preparing {}", all.display()))?;
        let d = all.join(account).join(region);
        fleetport_store::datadir::prepare(&all.join(account))
            .and_then(|()| fleetport_store::datadir::prepare(&d))
            .with_context(|| format!("preparing {}", d.display()))?;
        d
    };
    let ecr = Ecr::open(
        store.clone(),
        &dir,
        region,
        account,
        registry_host,
        config.registry_upload_ttl,
        config
            .blob_store
            .as_ref()
            .map(|r| r.within(&format!("{account}/{region}"))),
    )
    .with_context(|| format!("opening the registry in {}", dir.display()))?;
    ecr.set_authorizer(Arc::new(iam.clone()));
    let ecs = Ecs::new(store.clone(), region, account)
        .with_agent_timeout(config.agent_timeout.as_secs_f64());
    ecs.set_roles(Arc::new(crate::links::IamRoles(iam.clone())));
    let (acm, elb) =
        crate::links::load_balancing(store, region, account, &ecs, sealer.clone(), fleet.shared())
            .context("loading the load balancer configuration")?;
    fleet.add(elb.clone());
    Ok(Arc::new(Tenant {
        account: account.to_string(),
        region: region.to_string(),
        agent_api: AgentApi::new(ecs.clone(), epochs.clone()),
        ecs,
        ecr,
        acm,
        elb,
        recorded: AtomicBool::new(is_default),
        loops: Mutex::new(Vec::new()),
    }))
}

/// Which tenant the unprefixed collections belong to: as recorded, else (a data directory
/// from before tenancy, or a new one) the default account and region, recorded now. So a
/// restart with another `--region` does not pass one region's state off as another's.
async fn unprefixed_owner(base: &dyn Store, config: &Config) -> anyhow::Result<(String, String)> {
    let recorded: Option<(String, String)> =
        fleetport_store::read(base, |t| t.get_json(OWNER, "owner"))?;
    if let Some(owner) = recorded {
        return Ok(owner);
    }
    let owner = (config.account_id.clone(), config.region.clone());
    record_owner(base, &owner).await?;
    Ok(owner)
}

async fn record_owner(base: &dyn Store, owner: &(String, String)) -> Result<(), StoreError> {
    let owner = owner.clone();
    fleetport_store::write::<_, StoreError>(base, move |t| {
        t.put_json(OWNER, "owner", &owner)?;
        Ok(())
    })
    .await
}

/// Brings records written by older builds up to date (each step is a no-op once done).
async fn migrate(t: &Tenant) -> anyhow::Result<()> {
    use anyhow::Context;
    // Blobs the manifests of older state name, recorded as held by their repositories.
    t.ecr
        .link_existing()
        .await
        .context("recording which repository holds which blob")?;
    // Records saved before ECS's indexes existed.
    t.ecs
        .index()
        .await
        .map_err(|e| anyhow::anyhow!("indexing tasks: {}", e.message))?;
    // Certificates and their uses from before the store kept reference records.
    t.acm
        .declare_existing()
        .await
        .context("recording the certificates")?;
    t.elb
        .prepare_store()
        .await
        .context("preparing the load balancer configuration")?;
    Ok(())
}

/// Forgets stopped tasks once their retention has passed, checking a few times per retention
/// period (at least once a minute), so the store and the agents' polls stay bounded.
async fn expire_stopped_tasks(ecs: Ecs, retention: std::time::Duration) {
    let every = (retention / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    loop {
        tokio::time::sleep(every).await;
        match ecs.expire_stopped(retention.as_secs_f64()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(tasks = n, "forgot stopped tasks"),
            Err(e) => tracing::warn!(error = %e, "could not expire stopped tasks"),
        }
    }
}

/// The built-in "FARGATE" capacity of one account and region: the same agent as
/// `fleetport agent`, in-process, talking to this listener over the same signed API as the
/// account's root (a static key of the account, or its 12-digit ID with the shared secret).
/// Without a Docker engine it logs why and stays off.
async fn run_managed_capacity(
    config: Config,
    endpoint: String,
    account: String,
    region: String,
    instance_id: String,
) {
    let creds = &config.credentials;
    let own = creds
        .access_keys()
        .find(|k| creds.account(k).unwrap_or(&config.account_id) == account)
        .and_then(|k| Some((k.to_string(), creds.secret(k)?.to_string())));
    let Some((key, secret)) = own.or_else(|| {
        creds
            .account_keys_secret()
            .map(|s| (account.clone(), s.to_string()))
    }) else {
        tracing::warn!(%account, "no root key for this account: its FARGATE capacity is off");
        return;
    };
    let api = match fleetport_agent::ApiClient::new(&endpoint, &region, &key, &secret) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "managed capacity disabled");
            return;
        }
    };
    let rt = match fleetport_runtime::DockerRuntime::connect().await {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            tracing::warn!(error = %e, "no Docker engine: the FARGATE launch type is unavailable");
            return;
        }
    };
    let agent = fleetport_agent::Agent::managed(api, rt, "127.0.0.1", &instance_id)
        .with_cleanup_wait(config.task_cleanup_wait);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    if let Err(e) = agent.run(rx).await {
        tracing::warn!(error = %e, "managed capacity stopped");
    }
}

/// A regional API as the gateway sees it: each call goes to the caller's tenant's service.
pub struct Regional {
    tenants: Arc<Tenants>,
    pick: fn(&Tenant) -> &dyn Service,
}

impl Regional {
    pub fn new(tenants: Arc<Tenants>, pick: fn(&Tenant) -> &dyn Service) -> Self {
        Self { tenants, pick }
    }

    fn prototype(&self) -> &dyn Service {
        (self.pick)(self.tenants.default_tenant())
    }

    /// The tenant an ARN names (`arn:aws:<service>:<region>:<account>:…`), if it exists.
    fn tenant_of_arn(&self, arn: &str) -> Option<Arc<Tenant>> {
        let mut parts = arn.splitn(6, ':');
        let (Some("arn"), Some(_), Some(_), Some(region), Some(account)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        self.tenants.existing(account, region)
    }
}

impl Service for Regional {
    fn model(&self) -> &'static fleetport_proto::model::ServiceModel {
        self.prototype().model()
    }

    fn constraint_error_code(&self) -> &'static str {
        self.prototype().constraint_error_code()
    }

    fn implements(&self, operation: &str) -> bool {
        self.prototype().implements(operation)
    }

    fn call<'a>(
        &'a self,
        ctx: &'a RequestContext,
        operation: &'a str,
        input: Value,
    ) -> BoxFuture<'a, Result<Value, AwsError>> {
        Box::pin(async move {
            let t = self.tenants.get(&ctx.account_id, &ctx.region)?;
            self.tenants.record(&t).await?;
            (self.pick)(&t).call(ctx, operation, input).await
        })
    }

    fn resources(&self, ctx: &RequestContext, operation: &str, input: &Value) -> Vec<String> {
        match self.tenants.get(&ctx.account_id, &ctx.region) {
            Ok(t) => (self.pick)(&t).resources(ctx, operation, input),
            Err(_) => self.prototype().resources(ctx, operation, input),
        }
    }

    fn resource_policy(&self, resource: &str) -> Option<String> {
        let t = self.tenant_of_arn(resource)?;
        (self.pick)(&t).resource_policy(resource)
    }

    fn resource_tags(&self, resource: &str) -> Vec<(String, String)> {
        self.tenant_of_arn(resource)
            .map(|t| (self.pick)(&t).resource_tags(resource))
            .unwrap_or_default()
    }

    fn also_needs(
        &self,
        ctx: &RequestContext,
        operation: &str,
        input: &Value,
    ) -> Vec<fleetport_proto::auth::Access> {
        match self.tenants.get(&ctx.account_id, &ctx.region) {
            Ok(t) => (self.pick)(&t).also_needs(ctx, operation, input),
            Err(_) => Vec::new(),
        }
    }
}
