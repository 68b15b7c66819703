//! Certificate authority and leaf minting for TLS inspection.
