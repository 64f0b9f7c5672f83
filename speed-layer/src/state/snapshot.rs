//! Serializable copies of window state, for checkpoints.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tandem_shared::coverage::StartRange;
use tandem_shared::row::GroupKey;
use tandem_shared::time::EventTime;
use tandem_shared::window::Window;

use super::{
    Error, GroupMap, Pinned, PinnedWindows, Result, Session, ViewState, WindowGroups, Windows,
    shard_of,
};
use crate::aggregate::PartialAggregate;
use crate::program::ViewProgram;

impl ViewState {
    /// A serializable copy of the state.
    pub fn snapshot(&self) -> ViewSnapshot {
        self.pin(StartRange::new(EventTime::MIN, EventTime::MAX))
            .snapshot()
    }
}

impl Pinned {
    /// A serializable copy of the pinned windows (pin the whole range for a checkpoint).
    pub fn snapshot(&self) -> ViewSnapshot {
        let entries = match &self.windows {
            // Panes, sealed windows and release markers as they are (see `PinnedPanes::entries`).
            PinnedWindows::Panes(panes) => panes
                .entries()
                .into_iter()
                .map(|(window, entry)| {
                    let (group, accs) = entry.map_or((GroupKey::new(), Vec::new()), |(k, a)| {
                        (
                            k.clone(),
                            a.iter().map(PartialAggregate::to_bytes).collect(),
                        )
                    });
                    EntrySnapshot {
                        start: window.start.millis(),
                        end: window.end.millis(),
                        group,
                        accs,
                    }
                })
                .collect(),
            _ => self
                .partials()
                .into_iter()
                .map(|p| EntrySnapshot {
                    start: p.window.start.millis(),
                    end: p.window.end.millis(),
                    group: p.group,
                    accs: p.accs.iter().map(PartialAggregate::to_bytes).collect(),
                })
                .collect(),
        };
        ViewSnapshot {
            view: self.program().view.name.clone(),
            version: self.program().view.version.0.clone(),
            entries,
        }
    }
}

impl ViewState {
    /// Rebuilds state from a snapshot of the same view version.
    pub fn restore(program: Arc<ViewProgram>, snapshot: &ViewSnapshot) -> Result<Self> {
        let mut state = Self::new(program);
        let view = state.program.view.name.clone();
        for e in &snapshot.entries {
            let accs = e
                .accs
                .iter()
                .map(|b| PartialAggregate::from_bytes(b))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| Error::Restore {
                    view: view.clone(),
                    source,
                })?;
            let (start, end) = (EventTime(e.start), EventTime(e.end));
            if let Windows::Panes(panes) = &mut state.windows {
                let window = Window { start, end };
                // No aggregates: a marker (every view has at least one aggregate).
                let entry = (!accs.is_empty()).then(|| (e.group.clone(), accs));
                if !panes.restore(window, entry, &mut state.tally) {
                    return Err(Error::Checkpoint {
                        view,
                        detail: format!("entry [{start}, {end}) is neither a pane nor a window"),
                    });
                }
                continue;
            }
            state.tally.add(&e.group, &accs);
            match &mut state.windows {
                Windows::Fixed(windows) => {
                    let window = windows.entry(start).or_insert_with(|| {
                        Arc::new(WindowGroups {
                            end,
                            groups: GroupMap::default(),
                        })
                    });
                    Arc::make_mut(window).groups.insert(e.group.clone(), accs);
                }
                Windows::Panes(_) => {}
                Windows::Sessions(shards) => {
                    Arc::make_mut(&mut shards[shard_of(&e.group)])
                        .entry(e.group.clone())
                        .or_default()
                        .insert(start, Session { end, accs });
                }
            }
        }
        Ok(state)
    }
}

/// Serializable state of one view over one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewSnapshot {
    pub view: String,
    pub version: String,
    pub entries: Vec<EntrySnapshot>,
}

/// One window and group of a [`ViewSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntrySnapshot {
    pub start: i64,
    pub end: i64,
    pub group: GroupKey,
    pub accs: Vec<Vec<u8>>,
}
