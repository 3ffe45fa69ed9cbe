//! A gate webhook server for the SDK tests, on 127.0.0.1, answering seed 002's WebhookReview.
#![allow(dead_code)] // each test binary reads different fields

use std::sync::Arc;

use gamezone::api::WebhookReview;
use serde_json::json;

/// One request the server got.
#[derive(Clone, Debug)]
pub struct Heard {
    pub at: std::time::Instant,
    pub path: String,
    pub review: WebhookReview,
}

/// A webhook server on 127.0.0.1: `/ready` says no to its first `no` calls, then yes;
/// `/deletable` says yes; `/constraint` answers 200. Every request is kept.
pub async fn webhook_server(no: usize) -> (u16, Arc<std::sync::Mutex<Vec<Heard>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard = Arc::new(std::sync::Mutex::new(Vec::<Heard>::new()));
    let log = heard.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let log = log.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).await.unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.unwrap();
                let review: WebhookReview = serde_json::from_slice(&body).unwrap();
                let uid = review.request.as_ref().unwrap().uid.clone();
                let asked = {
                    let mut log = log.lock().unwrap();
                    log.push(Heard { at: std::time::Instant::now(), path: path.clone(), review });
                    log.iter().filter(|h| h.path == path).count()
                };
                let allowed = match path.as_str() {
                    "/ready" => asked > no,
                    _ => true,
                };
                let answer = json!({"response": {"uid": uid, "allowed": allowed, "reason": format!("call {asked}")}});
                let answer = answer.to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let mut stream = reader.into_inner();
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, heard)
}
