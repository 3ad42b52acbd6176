//! Fleetport's AWS wire layer: SigV4 verification, the awsJson1.1 and awsQuery protocols, input
//! validation driven by the official botocore service models, and AWS error envelopes.
//!
//! Owns everything between "bytes arrived" and "a service method is called with a validated
//! JSON document". It depends on no service crate; services plug in through [`gateway::Service`].

pub mod auth;
pub mod clock;
pub mod error;
pub mod gateway;
pub mod input;
pub mod model;
pub mod paging;
pub mod query;
pub mod sigv4;
pub mod validate;

pub use error::AwsError;
pub use gateway::{ApiRequest, BoxFuture, Gateway, GatewayConfig, RequestContext, Service};
