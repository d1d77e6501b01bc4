//! `outrigger-config` owns the contract between operators, the control plane and the sidecars:
//! the mesh resources operators write ([`mesh`]), the [`Snapshot`] a sidecar runs, the static
//! sidecar file ([`sidecar`]), and loading with errors that name the field path, line, column
//! and reason ([`load`]).
#![forbid(unsafe_code)]

pub mod documents;
pub mod duration;
pub mod error;
pub mod lifeline;
pub mod load;
pub mod locate;
pub mod mesh;
pub mod path;
pub mod resilience;
pub mod sidecar;
pub mod snapshot;
pub mod validate;

pub use error::{ConfigError, FieldError};
pub use load::{from_yaml, from_yaml_validated, from_yaml_warned};
pub use resilience::{
    Backoff, Ewma, Fault, FaultAbort, FaultDelay, GrpcStatus, Limits, LoadBalancer,
    OutlierDetection, RateLimit, RetryBudget, RetryOn, RetryPolicy,
};
pub use sidecar::{ProxySettings, SidecarFile, TracingSettings};
pub use snapshot::{
    identity, Destination, Endpoint, HeaderMatch, Inbound, Mtls, MtlsMode, Protocol, Route,
    RouteMatch, Snapshot, WeightedVersion, DEFAULT_TRUST_DOMAIN,
};
pub use validate::{Validate, Validator};
