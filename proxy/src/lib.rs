//! Portcullis: a forward proxy for networks that run Outlook/Exchange behind proxy
//! authentication and TLS inspection.

pub mod ca_cmd;
pub mod cli;
pub mod config;
pub mod netfilter_cmd;
