//! The schema as served is the contract's (plus `analysisEvents`), pinned by a checked-in copy.
//! After an intended change: `UPDATE_SDL=1 cargo test -p graph-gateway --test schema`.

const CHECKED_IN: &str = include_str!("../schema.graphql");

#[test]
fn served_sdl_is_the_checked_in_schema() {
    let served = graph_gateway::sdl();
    if std::env::var_os("UPDATE_SDL").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"),
            &served,
        )
        .unwrap();
        return;
    }
    assert_eq!(
        served, CHECKED_IN,
        "schema changed; see this file's doc to update the copy"
    );
}
