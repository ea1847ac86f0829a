//! graylane's routing core: everything that decides and compiles, with no
//! proxy-wasm dependency and no host calls. The plugin (the workspace's root
//! package) feeds it headers and applies what it returns; the `graylane`
//! command (crates/cli) runs the very same code, so what the command says is
//! what the gateway does.
//!
//! Where things are:
//! - [`decision`]: the request decision, the whole routing contract. Start here.
//! - [`config`]: reads the JSON document and compiles it, once, into [`rules::Rules`].
//! - [`request`]: the view of one request's headers, cookies and query.
//! - [`split`]: weights, sticky hashing and the bucket layout.
//! - [`source`]: live rules: the `source` section, the fetcher state machine
//!   (lease, versions, backoff) behind small host traits, tested natively.
//! - [`registry`]: Consul service meta and Nacos instance metadata → rules.
//! - [`metrics`]: metric names and the per-worker request counts.
#![forbid(unsafe_code)]

pub mod affinity;
pub mod baggage;
pub mod config;
pub mod json;
pub mod read;
pub mod decision;
pub mod metrics;
pub mod pattern;
pub mod registry;
pub mod request;
pub mod rules;
pub mod source;
pub mod split;

/// graylane's version, the workspace's (`Cargo.toml`): what `graylane
/// --version` prints, what the plugin should log once when configured and
/// show in [`metrics::build_info_name`], and the version of a release bundle.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
