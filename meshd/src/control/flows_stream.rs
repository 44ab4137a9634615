//! Answering `flows` and `flows follow` on the control socket: the history, one JSON line
//! each, then (follow) every new line until the client closes. A follower too slow for the
//! flow rate loses the oldest lines of its queue and gets a `lost_events` line from
//! `OBSERVER_QUEUE` saying how many, never holding up the collector; one that stops reading
//! altogether is dropped after [`super::REQUEST_TIMEOUT`].

use jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::broadcast::error::RecvError;

use super::REQUEST_TIMEOUT;
use crate::flows::history::{FlowHub, Line};
use crate::flows::record::{FlowsResponse, LostEvents, LostEventsSource, ResponseItem};
use crate::metrics::Metrics;

/// What the control socket serves flows from.
#[derive(Clone, Debug)]
pub struct FlowsService {
    /// The history and the followers' channel.
    pub hub: FlowHub,
    /// Where lost lines are counted.
    pub metrics: Metrics,
    /// This node's name, on `lost_events` lines.
    pub node_name: String,
}

/// Writes one line (and its newline) within the timeout.
async fn write_line(write: &mut OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        write.write_all(line.as_bytes()).await?;
        write.write_all(b"\n").await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client did not read"))?
}

/// Serves `flows` (`follow` false) or `flows follow` to a client; `read` is the client's half
/// after its request line (EOF there ends a follow).
pub async fn answer(
    service: &FlowsService,
    follow: bool,
    mut read: impl AsyncRead + Unpin,
    mut write: OwnedWriteHalf,
) -> std::io::Result<()> {
    if !follow {
        for line in service.hub.history() {
            write_line(&mut write, &line).await?;
        }
        return tokio::time::timeout(REQUEST_TIMEOUT, write.shutdown())
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "client did not read")
            })?;
    }
    let (history, mut rx) = service.hub.follow();
    for line in history {
        write_line(&mut write, &line).await?;
    }
    let mut sink = [0u8; 64];
    loop {
        let next: Result<Line, RecvError> = tokio::select! {
            next = rx.recv() => next,
            // The client closed (or sent more, which is ignored).
            n = read.read(&mut sink) => match n {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
        };
        match next {
            Ok(line) => write_line(&mut write, &line).await?,
            Err(RecvError::Lagged(lost)) => {
                service
                    .metrics
                    .flows()
                    .lost(LostEventsSource::ObserverQueue, lost);
                let notice = FlowsResponse {
                    item: ResponseItem::LostEvents(LostEvents {
                        source: LostEventsSource::ObserverQueue,
                        num_events_lost: lost,
                    }),
                    node_name: service.node_name.clone(),
                    time: Timestamp::now(),
                };
                let line = serde_json::to_string(&notice).map_err(std::io::Error::other)?;
                write_line(&mut write, &line).await?;
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}
