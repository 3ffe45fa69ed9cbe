//! The API server's own counters (`/metrics`), read before and after a phase of a benchmark:
//! requests by verb and resource, the time spent serving them, bytes received and sent, watch
//! events sent, the etcd operations behind them, and the admission webhooks called. The API
//! server counts every client alike, so a phase's difference is all the work done while it ran:
//! the side's own requests and what they caused (scheduler, kubelets, garbage collector).
#![allow(dead_code)] // each bench uses a different subset

use std::collections::BTreeMap;

/// The tables a scrape yields, each a counter by key.
pub const TABLES: [&str; 8] = [
    "requests",
    "request ms",
    "request bytes",
    "response bytes",
    "watch events",
    "watch event bytes",
    "etcd operations",
    "webhook calls",
];

/// Counters by table and key, e.g. `requests` → `APPLY gameservers/status` → 2051.
#[derive(Clone, Debug, Default)]
pub struct Counters(pub BTreeMap<&'static str, BTreeMap<String, f64>>);

impl Counters {
    /// The counters in the text of an API server's `/metrics`.
    pub fn parse(text: &str) -> Counters {
        let mut out = Counters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, labels_of(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            let l = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
            let resource = || match l("subresource") {
                "" => l("resource").to_string(),
                sub => format!("{}/{sub}", l("resource")),
            };
            let (table, key) = match name {
                // Non-resource requests (this scrape, /healthz) are nobody's phase.
                "apiserver_request_total" if !l("resource").is_empty() => {
                    ("requests", format!("{} {}", l("verb"), resource()))
                }
                // The sum of the requests' latencies, waits included: on a saturated control
                // plane it tells which requests waited more than what each cost. A watch's time
                // is how long it stayed open, so watches are left out.
                "apiserver_request_duration_seconds_sum"
                    if !l("resource").is_empty() && !matches!(l("verb"), "WATCH" | "WATCHLIST" | "CONNECT") =>
                {
                    ("request ms", format!("{} {}", l("verb"), resource()))
                }
                "apiserver_request_body_size_bytes_sum" => {
                    ("request bytes", format!("{} {}", l("verb"), l("resource")))
                }
                "apiserver_response_sizes_sum" if !l("resource").is_empty() => {
                    ("response bytes", format!("{} {}", l("verb"), resource()))
                }
                // `resource` in current releases, `kind` in older ones.
                "apiserver_watch_events_total" => ("watch events", format!("{}{}", l("resource"), l("kind"))),
                "apiserver_watch_events_sizes_sum" => ("watch event bytes", format!("{}{}", l("resource"), l("kind"))),
                "etcd_request_duration_seconds_count" => {
                    ("etcd operations", format!("{} {}", l("operation"), l("type")))
                }
                // Admission webhooks the API server called (a peer's own, or any in the cluster).
                "apiserver_admission_webhook_admission_duration_seconds_count" => {
                    ("webhook calls", format!("{} {} {}", l("type"), l("operation"), l("name")))
                }
                _ => continue,
            };
            // Each table holds what its name says: times are counted in seconds.
            let value = if table.ends_with(" ms") { value * 1e3 } else { value };
            *out.0.entry(table).or_default().entry(key).or_default() += value;
        }
        out
    }

    /// What grew from `before` to `self`.
    pub fn since(&self, before: &Counters) -> Counters {
        let mut out = Counters::default();
        for (table, now) in &self.0 {
            let was = before.0.get(table);
            let grown = now
                .iter()
                .map(|(k, v)| (k.clone(), v - was.and_then(|w| w.get(k)).copied().unwrap_or(0.0)))
                .filter(|(_, d)| *d > 0.0)
                .collect();
            out.0.insert(table, grown);
        }
        out
    }

    /// Adds `other` to these.
    pub fn add(&mut self, other: &Counters) {
        for (table, rows) in &other.0 {
            let mine = self.0.entry(table).or_default();
            for (k, v) in rows {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
    }

    /// The sum of a table.
    pub fn total(&self, table: &str) -> f64 {
        // (An empty float sum is -0.0.)
        self.0.get(table).map(|t| t.values().sum::<f64>() + 0.0).unwrap_or(0.0)
    }
}

/// `a="x",b="y"` as a map (label values here hold no quotes or commas).
fn labels_of(s: &str) -> BTreeMap<String, String> {
    s.split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim_start_matches(',').to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

/// The API server's counters now.
pub async fn scrape(client: &kube::Client) -> Counters {
    let req = http::Request::get("/metrics").body(Vec::new()).expect("a GET of /metrics");
    Counters::parse(&client.request_text(req).await.expect("the API server's /metrics"))
}

/// Prints each table per instance, one column per side: rows that are at least `floor` per
/// instance for some side, the largest first (by the first side), and the table's total.
/// Byte tables are shown in KB.
pub fn print_per_instance(sides: &[(&str, &Counters, f64)], floor: f64) {
    for table in TABLES {
        let bytes = table.contains("bytes");
        let scale = if bytes { 1e-3 } else { 1.0 };
        let keys: std::collections::BTreeSet<&String> =
            sides.iter().flat_map(|(_, c, _)| c.0.get(table).into_iter().flat_map(|t| t.keys())).collect();
        let per = |c: &Counters, n: f64, k: &str| c.0.get(table).and_then(|t| t.get(k)).copied().unwrap_or(0.0) / n;
        let mut rows: Vec<(&String, Vec<f64>)> = keys
            .into_iter()
            .map(|k| (k, sides.iter().map(|(_, c, n)| per(c, *n, k) * scale).collect::<Vec<_>>()))
            .filter(|(_, v)| v.iter().any(|x| *x >= floor))
            .collect();
        rows.sort_by(|a, b| b.1[0].total_cmp(&a.1[0]).then(a.0.cmp(b.0)));
        let head: Vec<String> = sides.iter().map(|(name, _, _)| format!("{name:>12}")).collect();
        println!("{table} per instance{} (API server /metrics): {}", if bytes { ", KB" } else { "" }, head.join(""));
        for (k, v) in rows {
            let cells: Vec<String> = v.iter().map(|x| format!("{x:>12.2}")).collect();
            println!("  {k:<44}{}", cells.join(""));
        }
        let totals: Vec<String> =
            sides.iter().map(|(_, c, n)| format!("{:>12.2}", c.total(table) / n * scale)).collect();
        println!("  {:<44}{}", "total", totals.join(""));
    }
}
