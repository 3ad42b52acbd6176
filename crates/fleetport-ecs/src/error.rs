//! ECS's error vocabulary, mapped onto the wire error type.

use fleetport_proto::AwsError;
use fleetport_store::StoreError;

pub type EcsResult<T> = Result<T, AwsError>;

pub fn client(message: impl Into<String>) -> AwsError {
    AwsError::client("ClientException", message)
}

pub fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::client("InvalidParameterException", message)
}

pub fn cluster_not_found() -> AwsError {
    AwsError::client("ClusterNotFoundException", "Cluster not found.")
}

pub fn resource_not_found(message: impl Into<String>) -> AwsError {
    AwsError::client("ResourceNotFoundException", message)
}

/// Store failures are internal faults; the detail goes to the log, not to the client.
pub fn store(e: StoreError) -> AwsError {
    tracing::error!(error = %e, "state store failure");
    AwsError::server_exception()
}

/// Carries an ECS error through the store's transaction helpers (which need `From<StoreError>`).
#[derive(Debug)]
pub struct Failure(pub AwsError);

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure(store(e))
    }
}

/// Runs `f` in one write transaction; an `Abort::Domain` error rolls it back and is returned.
pub async fn write<T: Send + 'static>(
    db: &dyn fleetport_store::Store,
    f: impl FnOnce(&mut dyn fleetport_store::WriteTxn) -> Result<T, fleetport_store::Abort<AwsError>>
    + Send
    + 'static,
) -> EcsResult<T> {
    use fleetport_store::Abort;
    fleetport_store::write(db, move |txn| {
        f(txn).map_err(|e| match e {
            Abort::Domain(d) => Abort::Domain(Failure(d)),
            Abort::Store(s) => Abort::Store(s),
        })
    })
    .await
    .map_err(|f: Failure| f.0)
}

/// Runs `f` against a read snapshot.
pub fn read<T>(
    db: &dyn fleetport_store::Store,
    f: impl FnOnce(&dyn fleetport_store::ReadTxn) -> EcsResult<T>,
) -> EcsResult<T> {
    fleetport_store::read(db, |txn| f(txn).map_err(Failure)).map_err(|f: Failure| f.0)
}
