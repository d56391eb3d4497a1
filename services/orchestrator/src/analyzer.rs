//! What an analysis computes. The orchestrator only sequences events around it.

use std::time::Duration;

use async_trait::async_trait;
use contracts::RequestAnalysis;
use serde_json::{Value, json};

/// Runs one analysis. `Err` is a failed analysis (reported as `status: FAILED` with the
/// message), never a lost command.
#[async_trait]
pub trait Analyzer: Send + Sync + 'static {
    /// Computes the result of `request`.
    async fn analyze(&self, request: &RequestAnalysis) -> Result<Value, String>;
}

/// The built-in analyzer: takes `duration` of (possibly simulated) time and returns a result
/// derived only from the input, so every run and every replay agrees. Parameters
/// `{"fail": "reason"}` make it fail with that reason, for exercising the FAILED path.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinAnalyzer {
    /// How long each analysis takes.
    pub duration: Duration,
}

#[async_trait]
impl Analyzer for BuiltinAnalyzer {
    async fn analyze(&self, request: &RequestAnalysis) -> Result<Value, String> {
        tokio::time::sleep(self.duration).await;
        if let Some(reason) = request.parameters.as_ref().and_then(|p| p.get("fail")) {
            return Err(reason
                .as_str()
                .map_or_else(|| reason.to_string(), str::to_owned));
        }
        // FNV-1a: a stable hash (std's hasher may change between releases).
        let input = format!(
            "{}\u{0}{}\u{0}{}",
            request.asset_id,
            request.analysis_type,
            request
                .parameters
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default()
        );
        let hash = input.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Ok(json!({
            "assetId": request.asset_id,
            "analysisType": request.analysis_type,
            "score": (hash % 10_000) as f64 / 100.0,
            "samples": 1 + hash % 1_000,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn request(parameters: Option<Value>) -> RequestAnalysis {
        RequestAnalysis {
            analysis_id: Uuid::from_u128(1),
            asset_id: "press-1".into(),
            analysis_type: "utilization".into(),
            parameters,
            requested_by: None,
            requested_at: contracts::format_timestamp(0),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn builtin_result_depends_only_on_input() {
        let a = BuiltinAnalyzer {
            duration: Duration::from_secs(3),
        };
        let first = a.analyze(&request(None)).await.unwrap();
        assert_eq!(first, a.analyze(&request(None)).await.unwrap());
        assert_ne!(
            first,
            a.analyze(&request(Some(json!({"window": 7}))))
                .await
                .unwrap()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fail_parameter_fails_with_its_reason() {
        let a = BuiltinAnalyzer::default();
        assert_eq!(
            a.analyze(&request(Some(json!({"fail": "sensor offline"}))))
                .await,
            Err("sensor offline".into())
        );
    }
}
