//! Portcullis: a forward proxy for networks that run Outlook/Exchange behind proxy
//! authentication and TLS inspection.
//!
//! A request's path: [`server`] accepts a connection and applies connection limits and
//! deadlines; [`http::handle`] routes each request to forwarding, a CONNECT tunnel or the
//! proxy's own pages; [`upstream`] resolves and dials origins; [`tunnel`] relays bytes;
//! [`access_log`] records the outcome.

pub mod access_log;
pub mod activity;
pub mod admin;
pub mod auth;
pub mod body;
pub mod ca_cmd;
pub mod cli;
pub mod config;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod intercept;
pub mod limits;
pub mod m365_feed;
pub mod metrics;
pub mod netfilter_cmd;
pub mod policy_cmd;
pub mod proxy_protocol;
pub mod reload;
pub mod rewind;
pub mod server;
pub mod splice;
pub mod telemetry;
pub mod tunnel;
pub mod upstream;
