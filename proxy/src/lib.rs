//! Portcullis: a forward proxy for networks that run Outlook/Exchange behind proxy
//! authentication and TLS inspection.
//!
//! Components below, handlers above. A request's path: [`server`] accepts a connection and
//! admits it; [`conn`] serves it under the client deadlines; [`http`] routes, decides,
//! authenticates and hands it to forwarding, a CONNECT tunnel or inspection; [`upstream`]
//! resolves and dials origins; [`tunnel`] relays bytes; [`access_log`] and [`metrics`] record
//! the outcome ([`record`]). The only public items are what the binary (`main.rs`) calls.

mod access_log;
mod activity;
mod admin;
mod auth;
mod body;
mod ca_cmd;
pub mod cli;
mod config;
mod conn;
mod context;
mod doctor;
mod doctor_cmd;
mod driver;
mod error;
#[cfg(test)]
mod fuzz;
mod groups;
mod headers;
mod http;
mod icap;
mod intercept;
mod limits;
mod m365_cache;
mod m365_feed;
mod metrics;
mod netfilter_cmd;
mod original_dst;
mod parents;
mod pinned;
mod policy_cmd;
mod ports;
mod proxy_protocol;
mod record;
mod reload;
mod rewind;
mod server;
mod telemetry;
mod tunnel;
mod upstream;
