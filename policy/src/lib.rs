//! Pure decision logic and configuration model for Portcullis.
//!
//! Nothing in this crate opens a socket or needs a runtime: every decision is a plain function of
//! typed facts, so it can be unit-tested exhaustively and explained offline
//! (`portcullis policy explain`).
