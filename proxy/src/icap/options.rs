//! The service's OPTIONS answer (RFC 3507 §4.10): `Preview`, `Allow: 204`, `ISTag`, `Methods`,
//! cached for its `Options-TTL` and asked again once it expires. One request at a time
//! refreshes it; the others wait for that answer.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::wire::{self, ChunkReader};
use super::{IcapError, Service};

/// Cache time when the service sends no `Options-TTL` (RFC 3507: the answer is then valid
/// until the service says otherwise; re-asking now and then notices a restarted service).
const DEFAULT_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Bytes of body the service wants before deciding; `None`: no preview.
    pub(crate) preview: Option<u32>,
    /// The service may answer 204 outside a preview (`Allow: 204`): logged; the proxy offers
    /// it only where it still holds the whole message.
    pub(crate) allow_204: bool,
    /// The service's state tag, logged at debug level when it changes.
    pub(crate) istag: Option<String>,
    expires: Instant,
}

#[derive(Default)]
pub(crate) struct OptionsCache {
    current: tokio::sync::Mutex<Option<Options>>,
}

impl Service {
    /// The service's options, from the cache or asked for now.
    pub(crate) async fn options(&self) -> Result<Options, IcapError> {
        self.options_with(false).await
    }

    /// The service's options, asked for now whatever the cache holds.
    pub(crate) async fn refresh_options(&self) -> Result<Options, IcapError> {
        self.options_with(true).await
    }

    async fn options_with(&self, refresh: bool) -> Result<Options, IcapError> {
        let mut current = self.options.current.lock().await;
        if let Some(options) = current
            .as_ref()
            .filter(|o| !refresh && o.expires > Instant::now())
        {
            return Ok(options.clone());
        }
        let fresh = tokio::time::timeout(self.timeout, self.ask_options())
            .await
            .map_err(|_| IcapError::Timeout(self.timeout))??;
        if current.as_ref().map(|o| &o.istag) != Some(&fresh.istag) {
            tracing::debug!(service = %self.name, istag = ?fresh.istag, preview = ?fresh.preview, allow_204 = fresh.allow_204, "ICAP options");
        }
        *current = Some(fresh.clone());
        Ok(fresh)
    }

    async fn ask_options(&self) -> Result<Options, IcapError> {
        let mut lease = self.pool.get().await?;
        let request = format!(
            "OPTIONS {} ICAP/1.0\r\nHost: {}\r\nEncapsulated: null-body=0\r\n\r\n",
            self.url.uri, self.url.host
        );
        let mut retried = false;
        let head = loop {
            let sent = lease.conn.writer.write_all(request.as_bytes()).await;
            let head = match sent {
                Ok(()) => wire::read_icap_head(&mut lease.conn.reader).await,
                Err(e) => Err(e.into()),
            };
            match head {
                Err(_) if lease.conn.reused && !retried => {
                    retried = true;
                    self.pool.reconnect(&mut lease).await?;
                }
                other => break other?,
            }
        };
        if head.status != 200 {
            return Err(IcapError::Status(head.status));
        }
        self.saw(&head);
        let sections = head.encapsulated()?;
        if sections.iter().any(|(name, _)| name == "opt-body") {
            let mut body = ChunkReader::new();
            while body.next(&mut lease.conn.reader).await?.is_some() {}
        }
        let methods = head.header("methods").unwrap_or_default();
        if !methods
            .split(',')
            .any(|m| m.trim().eq_ignore_ascii_case(self.method.as_str()))
        {
            return Err(IcapError::protocol(format!(
                "the service does not offer {} (Methods: {methods})",
                self.method.as_str()
            )));
        }
        let ttl = head
            .header("options-ttl")
            .and_then(|t| t.parse::<u64>().ok())
            .map_or(DEFAULT_TTL, Duration::from_secs);
        let options = Options {
            preview: head.header("preview").and_then(|p| p.parse().ok()),
            allow_204: head
                .header("allow")
                .is_some_and(|a| a.split(',').any(|v| v.trim() == "204")),
            istag: head.header("istag").map(str::to_owned),
            expires: Instant::now() + ttl,
        };
        if !closes(&head) {
            self.pool.put(lease);
        }
        Ok(options)
    }
}

/// The service said it closes the connection after this answer.
pub(crate) fn closes(head: &wire::IcapHead) -> bool {
    head.header("connection")
        .is_some_and(|c| c.eq_ignore_ascii_case("close"))
}
