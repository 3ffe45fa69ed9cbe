//! Progress of a run: a bar on a terminal, periodic structured log lines otherwise.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::summary::Summary;

/// Receives progress while layers are fetched and written.
pub trait Progress: Send + Sync {
    /// A layer starts.
    fn layer_started(&self, _layer: usize, _src: &str) {}
    /// More files and bytes of the current layer were written (increments).
    fn advanced(&self, _layer: usize, _files: u64, _bytes: u64) {}
    /// A layer is done.
    fn layer_finished(&self, _layer: usize, _files: u64, _bytes: u64, _elapsed: Duration) {}
    /// The run is done.
    fn finished(&self, _summary: &Summary) {}
}

/// Discards progress.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Debug)]
struct Counter {
    layer: usize,
    src: String,
    files: u64,
    bytes: u64,
    started: Instant,
    last_log: Instant,
}

impl Counter {
    fn new(layer: usize, src: &str) -> Self {
        let now = Instant::now();
        Counter { layer, src: src.to_owned(), files: 0, bytes: 0, started: now, last_log: now }
    }
    fn rate(&self) -> u64 {
        let s = self.started.elapsed().as_secs_f64();
        if s > 0.0 { (self.bytes as f64 / s) as u64 } else { 0 }
    }
}

/// Logs one `progress` line per layer every `every` (default 2 s), plus start and finish lines.
#[derive(Debug)]
pub struct LogProgress {
    every: Duration,
    current: Mutex<Option<Counter>>,
}

impl Default for LogProgress {
    fn default() -> Self {
        LogProgress { every: Duration::from_secs(2), current: Mutex::new(None) }
    }
}

impl Progress for LogProgress {
    fn layer_started(&self, layer: usize, src: &str) {
        tracing::info!(layer, source = src, "layer started");
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Counter::new(layer, src));
    }

    fn advanced(&self, layer: usize, files: u64, bytes: u64) {
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = g.as_mut().filter(|c| c.layer == layer) else {
            return;
        };
        c.files += files;
        c.bytes += bytes;
        if c.last_log.elapsed() >= self.every {
            c.last_log = Instant::now();
            tracing::info!(layer, source = %c.src, files = c.files, bytes = c.bytes, bytes_per_sec = c.rate(), "progress");
        }
    }

    fn layer_finished(&self, layer: usize, files: u64, bytes: u64, elapsed: Duration) {
        let rate = if elapsed.as_secs_f64() > 0.0 { (bytes as f64 / elapsed.as_secs_f64()) as u64 } else { 0 };
        tracing::info!(
            layer,
            files,
            bytes,
            elapsed_ms = elapsed.as_millis() as u64,
            bytes_per_sec = rate,
            "layer done"
        );
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A terminal progress bar (bytes and files of the current layer).
#[derive(Debug)]
pub struct BarProgress {
    bar: indicatif::ProgressBar,
    files: Mutex<u64>,
}

impl Default for BarProgress {
    fn default() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} layer {prefix} {msg} {binary_bytes} ({binary_bytes_per_sec}) {elapsed}",
        ) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        BarProgress { bar, files: Mutex::new(0) }
    }
}

impl Progress for BarProgress {
    fn layer_started(&self, layer: usize, src: &str) {
        self.bar.reset();
        self.bar.set_prefix(format!("{layer} {src}"));
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = 0;
    }
    fn advanced(&self, _layer: usize, files: u64, bytes: u64) {
        self.bar.inc(bytes);
        if files > 0 {
            let mut f = self.files.lock().unwrap_or_else(|p| p.into_inner());
            *f += files;
            self.bar.set_message(format!("{} files", *f));
        }
    }
    fn layer_finished(&self, layer: usize, files: u64, bytes: u64, elapsed: Duration) {
        self.bar.println(format!("layer {layer}: {files} files, {bytes} bytes in {:.1?}", elapsed));
    }
    fn finished(&self, _summary: &Summary) {
        self.bar.finish_and_clear();
    }
}
