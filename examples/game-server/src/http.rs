//! A small HTTP/1.1 GET server for the process's own endpoints (`/metrics`, a bot's `/report`):
//! one request per connection, what a scraper or `curl` sends.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An answer: its content type and body.
pub type Page = (&'static str, String);

/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// Serves GETs on `listener` with `page(path)`: a 404 naming `known` when it has none.
pub async fn serve<F>(listener: TcpListener, known: &'static str, page: F)
where
    F: Fn(&str) -> Option<Page> + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let page = page.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let text = String::from_utf8_lossy(&head);
            let path = text.split_whitespace().nth(1).unwrap_or("");
            let path = path.split('?').next().unwrap_or(path);
            let (status, (kind, body)) = match page(path) {
                Some(found) => ("200 OK", found),
                None => ("404 Not Found", ("text/plain", format!("try {known}\n"))),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}
