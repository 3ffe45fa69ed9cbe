//! Talks to the pod's SDK sidecar when it has one (`GAMEZONE_SDK_HTTP_PORT`): once the
//! listeners are up, POST `/ready` over its REST API on 127.0.0.1, then a `/health` ping every
//! [`HEALTH_EVERY`], so a zone whose type says `ready: Sdk` or checks health sees this server
//! Ready and alive. Plain HTTP/1.1 over a TCP socket: nothing else to link.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time between health pings: well inside the sidecar's default period (5 s).
pub const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// Time between tries of Ready while the sidecar does not answer.
const READY_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for one answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// POSTs `{}` to `path` on the sidecar; returns the HTTP status.
pub async fn post(port: u16, path: &str) -> Result<u16, String> {
    let call = async {
        let mut stream =
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.map_err(|e| format!("cannot connect: {e}"))?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("cannot send: {e}"))?;
        let mut answer = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut answer).await.map_err(|e| format!("cannot read the answer: {e}"))?;
        let text = String::from_utf8_lossy(&answer);
        text.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {:?}", text.chars().take(80).collect::<String>()))
    };
    tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
}

/// Says Ready (retrying until the sidecar takes it), then pings health every `every`, until
/// the server stops.
pub async fn run(port: u16, every: Duration) {
    loop {
        match post(port, "/ready").await {
            Ok(200) => {
                tracing::info!(sdk_port = port, "told the SDK sidecar Ready");
                break;
            }
            Ok(code) => tracing::warn!(sdk_port = port, code, "the SDK sidecar refused Ready; trying again"),
            Err(e) => {
                tracing::warn!(sdk_port = port, error = %e, "cannot reach the SDK sidecar to say Ready; trying again")
            }
        }
        tokio::time::sleep(READY_RETRY).await;
    }
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut pings, mut failing) = (0u64, false);
    loop {
        ticks.tick().await;
        match post(port, "/health").await {
            Ok(200) => {
                pings += 1;
                if failing || pings == 1 {
                    tracing::info!(
                        sdk_port = port,
                        pings,
                        every_s = every.as_secs(),
                        "health pings reach the SDK sidecar"
                    );
                }
                failing = false;
            }
            other => {
                // Once per outage: the sidecar marks the server Unhealthy if it lasts.
                if !failing {
                    let error = match other {
                        Ok(code) => format!("HTTP {code}"),
                        Err(e) => e,
                    };
                    tracing::warn!(sdk_port = port, error = %error, "health ping failed");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// A sidecar stand-in answering `code` to everything, recording request lines.
    async fn stand_in(code: u16) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut reader = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                let _ = tx.send(line.trim().to_string());
                let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}");
                reader.into_inner().write_all(reply.as_bytes()).await.unwrap();
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn ready_is_retried_until_taken_then_health_is_pinged() {
        let (port, mut heard) = stand_in(200).await;
        assert_eq!(post(port, "/ready").await, Ok(200));
        assert_eq!(heard.recv().await.unwrap(), "POST /ready HTTP/1.1");
        tokio::spawn(run(port, Duration::from_millis(50)));
        assert_eq!(heard.recv().await.unwrap(), "POST /ready HTTP/1.1");
        for _ in 0..3 {
            assert_eq!(heard.recv().await.unwrap(), "POST /health HTTP/1.1");
        }
        let (refusing, _) = stand_in(503).await;
        assert_eq!(post(refusing, "/ready").await, Ok(503));
        let closed = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        assert!(post(closed, "/ready").await.unwrap_err().contains("cannot connect"));
    }
}
