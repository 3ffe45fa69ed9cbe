//! The gRPC code in `crates/sdk/src/proto/` is generated from `proto/` and committed, so building the
//! operator needs no `protoc`. This test regenerates it (it needs `protoc`, installed by
//! `scripts/setup.sh`) and fails when the committed code is stale;
//! `GAMEZONE_REGENERATE=1 cargo test --test sdk proto::` rewrites it.

use std::path::Path;

#[test]
fn committed_grpc_code_matches_the_protos() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        .out_dir(out.path())
        .compile_protos(
            &[root.join("proto/agones_sdk.proto"), root.join("proto/carrier_sdk.proto")],
            &[root.join("proto")],
        )
        .expect("protoc compiles proto/ (install it: apt-get install protobuf-compiler)");
    let mut stale = Vec::new();
    for name in ["agones.dev.sdk.rs", "carrier.dev.sdk.rs"] {
        let fresh = std::fs::read_to_string(out.path().join(name)).unwrap();
        let committed_path = root.join("crates/sdk/src/proto").join(name);
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        if fresh != committed {
            if std::env::var_os("GAMEZONE_REGENERATE").is_some() {
                std::fs::write(&committed_path, &fresh).unwrap();
            } else {
                stale.push(committed_path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what proto/ generates: run `GAMEZONE_REGENERATE=1 cargo test --test sdk proto::` and commit"
    );
}
