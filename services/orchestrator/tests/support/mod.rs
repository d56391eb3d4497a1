//! What the orchestrator's test files share: an analyzer that counts its runs, and commands.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use contracts::RequestAnalysis;
use orchestrator::{Analyzer, BuiltinAnalyzer};
use serde_json::Value;
use uuid::Uuid;

/// Counts analyses actually run: the orchestrator's one side effect.
pub struct Counting {
    pub inner: BuiltinAnalyzer,
    pub runs: AtomicUsize,
}

#[async_trait]
impl Analyzer for Counting {
    async fn analyze(&self, request: &RequestAnalysis) -> Result<Value, String> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.inner.analyze(request).await
    }
}

/// Alice's command `n`: analysis id `n`, asset `press-n`.
pub fn request(n: u128, parameters: Option<Value>) -> RequestAnalysis {
    RequestAnalysis {
        analysis_id: Uuid::from_u128(n),
        asset_id: format!("press-{n}"),
        analysis_type: "utilization".into(),
        parameters,
        requested_by: Some("alice".into()),
        requested_at: contracts::format_timestamp(0),
    }
}
