//! Readiness: whether this process can do its job now, and if not, why.
//!
//! ```text
//!  supervisor (layer task started / failed)  ─┐
//!  probes (consumer assignment, object store) ─┼─► Readiness ─► GET /readyz: 200, or 503 + reasons
//! ```
//!
//! Components report their own condition; `/readyz` only reads. A component that never
//! reported is not ready ("starting"), so a process is not ready before each part has said so.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A component's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Ready,
    NotReady(String),
}

/// Why a component is not ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Reason {
    pub component: String,
    pub reason: String,
}

/// The conditions of the components that must be ready. Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<String, Condition>>>,
}

impl Readiness {
    /// Readiness over `components`, each not ready ("starting") until it reports.
    pub fn new<'a>(components: impl IntoIterator<Item = &'a str>) -> Self {
        let conditions = components
            .into_iter()
            .map(|c| (c.to_owned(), Condition::NotReady("starting".into())))
            .collect();
        Self {
            conditions: Arc::new(Mutex::new(conditions)),
        }
    }

    pub fn set(&self, component: &str, condition: Condition) {
        let mut conditions = self.conditions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = conditions.get(component)
            && *old != condition
        {
            match &condition {
                Condition::Ready => tracing::info!(component, "ready"),
                Condition::NotReady(reason) => tracing::warn!(component, reason, "not ready"),
            }
        }
        conditions.insert(component.to_owned(), condition);
    }

    pub fn ready(&self, component: &str) {
        self.set(component, Condition::Ready);
    }

    pub fn not_ready(&self, component: &str, reason: impl Into<String>) {
        self.set(component, Condition::NotReady(reason.into()));
    }

    /// Every component that is not ready, with its reason; empty when the process is ready.
    pub fn reasons(&self) -> Vec<Reason> {
        let conditions = self.conditions.lock().unwrap_or_else(|e| e.into_inner());
        conditions
            .iter()
            .filter_map(|(component, condition)| match condition {
                Condition::Ready => None,
                Condition::NotReady(reason) => Some(Reason {
                    component: component.clone(),
                    reason: reason.clone(),
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_start_not_ready_and_report_their_own_reason() {
        let r = Readiness::new(["speed", "storage"]);
        let starting: Vec<_> = r.reasons().into_iter().map(|r| r.component).collect();
        assert_eq!(starting, ["speed", "storage"]);
        r.ready("speed");
        r.ready("storage");
        assert!(r.reasons().is_empty());
        r.not_ready("storage", "object store unreachable: timed out");
        assert_eq!(
            r.reasons(),
            [Reason {
                component: "storage".into(),
                reason: "object store unreachable: timed out".into()
            }]
        );
        r.clone().ready("storage");
        assert!(r.reasons().is_empty(), "clones share state");
    }
}
