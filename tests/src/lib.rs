//! Test harness: start the real `portcullis` binary and loopback origins.
