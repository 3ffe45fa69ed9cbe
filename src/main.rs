//! The `gamezone` binary: the operator (`run`) and its tools (`crd`, `render`).

use clap::Parser;

/// Every watch event is decoded into many small allocations, most freed at once. With huge
/// pages off (below), mimalloc held 91-97 MiB at 2,000 servers on the local control plane where
/// glibc's allocator held 101-105, and 117 MiB after a restart against 174 (`benches/zone.rs`
/// prints the operator's RSS).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Where the kernel backs every large enough anonymous region with 2 MiB pages
    // (`transparent_hugepage=always`), a heap of many small objects keeps whole huge pages
    // resident for a few live bytes each: 30 MiB more RSS at 2,000 servers. The process does
    // not need them; a kernel that refuses the request changes nothing.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = gamezone::cli::Cli::parse();
    gamezone::telemetry::init(cli.log_format);
    cli.runtime()?.block_on(cli.run())
}
