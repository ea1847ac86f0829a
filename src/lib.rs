//! graylane: canary (gray) and blue-green routing for API gateways.
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
//! - [`cli`] (feature `cli`, default; left out of the .wasm): the `graylane`
//!   command's checks, explanations, simulations and Envoy config, all on
//!   [`decision::decide`].
//! - `plugin` (not on wasm32-unknown-unknown): the proxy-wasm glue that Envoy
//!   and APISIX load. It implements the host traits, fetches headers, calls
//!   [`decision::decide`] and applies the edits; nothing else.

#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod decision;
pub mod metrics;
pub mod registry;
pub mod request;
pub mod rules;
pub mod source;
pub mod split;

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod plugin;
