//! The partial → final merge: partials of any number of partitions into final rows, the same
//! shape as DataFusion's two-phase aggregation.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use foldhash::fast::RandomState;

use tandem_shared::row::{GroupKey, ViewRow};
use tandem_shared::window::Window;

use super::Partial;
use crate::aggregate::PartialAggregate;

/// Combines partial states of disjoint inputs. Both come from the same view program, so their
/// kinds always match; a mismatch is a bug and is logged.
pub(super) fn merge_accs(into: &mut [PartialAggregate], from: &[PartialAggregate]) {
    for (a, b) in into.iter_mut().zip(from) {
        if let Err(err) = a.merge(b) {
            tracing::error!(%err, "merging partial aggregates of one view");
        }
    }
}

/// Merges partials (of any number of partitions) into final rows, in result order. For session
/// views, fragments of one group that overlap are one session.
pub fn merge_partials(partials: Vec<Partial>, sessions: bool) -> Vec<ViewRow> {
    let mut rows: Vec<ViewRow> = merge_states(partials, sessions)
        .into_iter()
        .map(|p| ViewRow {
            window: p.window,
            group: p.group,
            values: p.accs.iter().map(PartialAggregate::evaluate).collect(),
        })
        .collect();
    rows.sort_by(ViewRow::order);
    rows
}

/// Merges partials (of any number of partitions) into one partial per window and group, in no
/// particular order: the state a rollup combines further.
pub fn merge_states(partials: Vec<Partial>, sessions: bool) -> Vec<Partial> {
    if sessions {
        let mut by_group: HashMap<GroupKey, Vec<Partial>, RandomState> = HashMap::default();
        for p in partials {
            by_group.entry(p.group.clone()).or_default().push(p);
        }
        let mut out = Vec::new();
        for (_, mut fragments) in by_group {
            fragments.sort_by_key(|p| p.window.start);
            let mut current: Option<Partial> = None;
            for f in fragments {
                match &mut current {
                    Some(c) if f.window.start < c.window.end => {
                        c.window.end = c.window.end.max(f.window.end);
                        merge_accs(&mut c.accs, &f.accs);
                    }
                    _ => {
                        if let Some(done) = current.replace(f) {
                            out.push(done);
                        }
                    }
                }
            }
            out.extend(current);
        }
        out
    } else {
        // Keys move in and out: a group key is never cloned.
        let mut by_key: HashMap<(Window, GroupKey), Vec<PartialAggregate>, RandomState> =
            HashMap::with_capacity_and_hasher(partials.len(), RandomState::default());
        for p in partials {
            match by_key.entry((p.window, p.group)) {
                Entry::Occupied(mut e) => merge_accs(e.get_mut(), &p.accs),
                Entry::Vacant(e) => {
                    e.insert(p.accs);
                }
            }
        }
        by_key
            .into_iter()
            .map(|((window, group), accs)| Partial {
                window,
                group,
                accs,
            })
            .collect()
    }
}
