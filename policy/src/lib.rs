//! Pure decision logic and configuration model for Portcullis.
//!
//! Nothing in this crate opens a socket or needs a runtime: every decision is a plain function of
//! typed facts, so it can be unit-tested exhaustively and explained offline
//! (`portcullis policy explain`).

mod compile;
pub mod config;
pub mod decision;
mod engine;
pub mod error;
pub mod exchange;
mod explain;
pub mod group;
pub mod host;
pub mod m365;
pub mod netfilter;
pub mod pac;
pub mod route;
mod rule;

pub use config::RawPolicy;
pub use decision::{
    Action, AuthRequirement, ConnectFacts, Decision, Identity, MatchedRule, RequestFacts,
    RuleSource, TimeoutProfile,
};
pub use engine::Policy;
pub use error::CompileError;
pub use exchange::ExchangeClass;
pub use explain::{ConditionMatch, Explanation};
pub use group::{account_name, group_aliases, normalize_group};
pub use host::Host;
pub use route::Route;
