//! The examples are living documentation: each one runs here.

#[path = "../examples/audit_subscriber.rs"]
mod audit_subscriber;

#[test]
fn audit_subscriber_example_runs() {
    audit_subscriber::main();
}
