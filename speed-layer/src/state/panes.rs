//! Hopping windows kept as panes: state per hop-wide slice of event time, one update per event.
//!
//! A hopping window of size `S` every `E` (`S` a multiple of `E`) is the union of `S / E`
//! consecutive *panes* `[p, p + E)`. Updating every window that contains an event costs `S / E`
//! group lookups (and, for a new group, `S / E` sets of fresh aggregates and sketches) per event;
//! updating its one pane costs one. A window's value is the merge of its panes' partials, made
//! when it is read (after the state lock is released, like the merge over partitions).
//!
//! A window must stop changing once it closes (the watermark passed its end) or the batch layer
//! covers it, while its panes still change for the later windows that share them. So before an
//! event lands in a pane, every window of that pane that is shut but still *virtual* (computed
//! from panes) is *sealed*: its merged state is copied out of the panes and kept as it is. A
//! window the batch layer covers is released (its partials returned for drift) and leaves a
//! marker; a pane goes once every window that contains it is sealed or released, and a marker once
//! no pane of its window is left.
//!
//! ```text
//!  event t ─► windows_of(t): shut (watermark, coverage) and virtual? ─► seal: merge its panes
//!       │ any window open?
//!       ▼
//!  pane align_down(t, E) ─► group ─► aggregates         (one update instead of S / E)
//!  read window W = merge of panes W, W+E, … W+S-E, or its sealed copy
//! ```

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::row::GroupKey;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::window::{Window, align_down};

use super::columns::ArgColumn;
use super::merge::merge_accs;
use super::{GroupMap, Partial, Tally, ViewState, WindowGroups, Windows, update_group};
use crate::aggregate::PartialAggregate;

/// Panes and sealed windows of one hopping view over one partition.
#[derive(Debug, Clone)]
pub(super) struct Panes {
    /// Window size and hop; `size` is a multiple of `every`, and larger.
    size: Span,
    every: Span,
    /// Pane state by pane start: the events of `[start, start + every)` applied while at least
    /// one window containing them was open.
    panes: BTreeMap<EventTime, Arc<WindowGroups>>,
    /// Windows no longer computed from panes, by start: `Some` holds a window sealed when it
    /// closed or was covered; `None` marks one released to the batch layer.
    sealed: BTreeMap<EventTime, Option<Arc<WindowGroups>>>,
}

/// One group's aggregates in a pane or sealed window.
pub(super) type Held<'a> = (&'a GroupKey, &'a [PartialAggregate]);

/// What a reader pinned of [`Panes`]: pointer copies, read without any lock.
#[derive(Debug)]
pub(super) struct PinnedPanes {
    size: Span,
    every: Span,
    range: StartRange,
    panes: Vec<(EventTime, Arc<WindowGroups>)>,
    sealed: BTreeMap<EventTime, Option<Arc<WindowGroups>>>,
}

/// Starts of the windows that contain the pane starting at `pane`, oldest first.
fn windows_of_pane(pane: EventTime, size: Span, every: Span) -> impl Iterator<Item = EventTime> {
    let every = every.millis().max(1);
    let count = size.millis() / every;
    (0..count)
        .rev()
        .map(move |back| EventTime(pane.millis().saturating_sub(back.saturating_mul(every))))
}

/// One partial per group of `groups`, labelled `window` (moved out when the state is not shared).
fn labelled(window: Window, groups: Arc<WindowGroups>, out: &mut Vec<Partial>) {
    let groups = Arc::try_unwrap(groups).map_or_else(|shared| shared.groups.clone(), |g| g.groups);
    out.extend(groups.into_iter().map(|(group, accs)| Partial {
        window,
        group,
        accs,
    }));
}

/// The groups of a window: its panes' aggregates merged (each group's first pane cloned, the
/// others merged into it).
fn merged<'a>(panes: impl Iterator<Item = &'a WindowGroups>) -> GroupMap<Vec<PartialAggregate>> {
    let mut groups: GroupMap<Vec<PartialAggregate>> = GroupMap::default();
    for pane in panes {
        for (key, accs) in &pane.groups {
            match groups.get_mut(key) {
                Some(into) => merge_accs(into, accs),
                None => {
                    groups.insert(key.clone(), accs.clone());
                }
            }
        }
    }
    groups
}

impl Panes {
    pub(super) fn new(size: Span, every: Span) -> Self {
        Self {
            size,
            every,
            panes: BTreeMap::new(),
            sealed: BTreeMap::new(),
        }
    }

    fn window(&self, start: EventTime) -> Window {
        Window {
            start,
            end: start.saturating_add(self.size),
        }
    }

    fn is_sealed(&self, start: EventTime) -> bool {
        // Sealed windows are the oldest ones: most lookups end at the first comparison.
        self.sealed
            .last_key_value()
            .is_some_and(|(last, _)| *last >= start)
            && self.sealed.contains_key(&start)
    }

    /// Copies the window at `start` out of its panes, so that later updates of the panes leave
    /// it as it is now.
    fn seal(&mut self, start: EventTime, tally: &mut Tally) {
        let window = self.window(start);
        let groups = merged(
            self.panes
                .range(window.start..window.end)
                .map(|(_, p)| &**p),
        );
        for (key, accs) in &groups {
            tally.add(key, accs);
        }
        self.sealed.insert(
            start,
            Some(Arc::new(WindowGroups {
                end: window.end,
                groups,
            })),
        );
    }

    /// Windows held (panes and sealed windows) for [`ViewState::size`].
    pub(super) fn held(&self) -> usize {
        self.panes.len() + self.sealed.values().filter(|w| w.is_some()).count()
    }

    pub(super) fn pin(&self, range: StartRange) -> PinnedPanes {
        // Windows starting in the range read panes up to `size - every` past its end.
        let panes_to = range
            .to
            .saturating_add(Span::from_millis(self.size.millis() - self.every.millis()));
        PinnedPanes {
            size: self.size,
            every: self.every,
            range,
            panes: self
                .panes
                .range(range.from..panes_to)
                .map(|(start, p)| (*start, Arc::clone(p)))
                .collect(),
            sealed: self
                .sealed
                .range(range.from..range.to)
                .map(|(start, w)| (*start, w.clone()))
                .collect(),
        }
    }

    /// Releases every window the batch layer covers: returns its partials (merged from its
    /// panes for a window still computed from them) and drops the panes no window needs.
    pub(super) fn release(&mut self, coverage: &Coverage, tally: &mut Tally) -> Vec<Partial> {
        let mut out = Vec::new();
        let covered_sealed: Vec<EventTime> = self
            .sealed
            .iter()
            .filter(|(start, w)| w.is_some() && coverage.contains(**start))
            .map(|(start, _)| *start)
            .collect();
        for start in covered_sealed {
            if let Some(Some(w)) = self.sealed.insert(start, None) {
                for (key, accs) in &w.groups {
                    tally.remove(key, accs);
                }
                labelled(self.window(start), w, &mut out);
            }
        }
        let mut virtual_covered: Vec<EventTime> = self
            .panes
            .keys()
            .flat_map(|p| windows_of_pane(*p, self.size, self.every))
            .filter(|w| coverage.contains(*w) && !self.sealed.contains_key(w))
            .collect();
        virtual_covered.sort_unstable();
        virtual_covered.dedup();
        for start in virtual_covered {
            let window = self.window(start);
            let groups = merged(
                self.panes
                    .range(window.start..window.end)
                    .map(|(_, p)| &**p),
            );
            out.extend(groups.into_iter().map(|(group, accs)| Partial {
                window,
                group,
                accs,
            }));
            self.sealed.insert(start, None);
        }
        self.drop_unneeded(tally);
        out
    }

    /// Drops panes whose every window is sealed or released, then the release markers of
    /// windows with no pane left.
    fn drop_unneeded(&mut self, tally: &mut Tally) {
        let (size, every) = (self.size, self.every);
        let sealed = &self.sealed;
        let unneeded: Vec<EventTime> = self
            .panes
            .keys()
            .copied()
            .filter(|p| windows_of_pane(*p, size, every).all(|w| sealed.contains_key(&w)))
            .collect();
        for start in unneeded {
            if let Some(pane) = self.panes.remove(&start) {
                for (key, accs) in &pane.groups {
                    tally.remove(key, accs);
                }
            }
        }
        let panes = &self.panes;
        self.sealed.retain(|start, w| {
            w.is_some()
                || panes
                    .range(*start..start.saturating_add(size))
                    .next()
                    .is_some()
        });
    }

    /// Restores one checkpoint entry of [`PinnedPanes::entries`]; `false` if its span fits neither a
    /// pane, a window nor a marker.
    pub(super) fn restore(
        &mut self,
        window: Window,
        entry: Option<(GroupKey, Vec<PartialAggregate>)>,
        tally: &mut Tally,
    ) -> bool {
        let span = Span::from_millis(window.end.millis().saturating_sub(window.start.millis()));
        let Some((key, accs)) = entry else {
            if span.millis() == 0 {
                self.sealed.entry(window.start).or_insert(None);
                return true;
            }
            if span == self.size {
                self.sealed.entry(window.start).or_insert_with(|| {
                    Some(Arc::new(WindowGroups {
                        end: window.end,
                        groups: GroupMap::default(),
                    }))
                });
                return true;
            }
            return false;
        };
        let target = if span == self.every {
            Arc::make_mut(self.panes.entry(window.start).or_insert_with(|| {
                Arc::new(WindowGroups {
                    end: window.end,
                    groups: GroupMap::default(),
                })
            }))
        } else if span == self.size {
            let slot = match self.sealed.entry(window.start) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(None),
            };
            Arc::make_mut(slot.get_or_insert_with(|| {
                Arc::new(WindowGroups {
                    end: window.end,
                    groups: GroupMap::default(),
                })
            }))
        } else {
            return false;
        };
        tally.add(&key, &accs);
        target.groups.insert(key, accs);
        true
    }
}

impl PinnedPanes {
    /// What a checkpoint keeps (pin the whole range): every pane (`end - start` is the hop),
    /// every sealed window (`end - start` is the size; with no entry when it has no group) and
    /// every release marker (`end == start`, no entry).
    pub(super) fn entries(&self) -> Vec<(Window, Option<Held<'_>>)> {
        let mut out = Vec::new();
        for (start, pane) in &self.panes {
            let window = Window {
                start: *start,
                end: pane.end,
            };
            out.extend(pane.groups.iter().map(|(k, a)| (window, Some((k, &a[..])))));
        }
        for (start, w) in &self.sealed {
            match w {
                Some(w) => {
                    let window = Window {
                        start: *start,
                        end: w.end,
                    };
                    if w.groups.is_empty() {
                        out.push((window, None));
                    }
                    out.extend(w.groups.iter().map(|(k, a)| (window, Some((k, &a[..])))));
                }
                None => out.push((
                    Window {
                        start: *start,
                        end: *start,
                    },
                    None,
                )),
            }
        }
        out
    }

    /// Partials of the windows starting in the pinned range, one per window and group: a sealed
    /// window's own, or its panes merged.
    pub(super) fn partials(&self, out: &mut Vec<Partial>) {
        for (start, w) in &self.sealed {
            if let Some(w) = w {
                let window = Window {
                    start: *start,
                    end: w.end,
                };
                out.extend(w.groups.iter().map(|(key, accs)| Partial {
                    window,
                    group: key.clone(),
                    accs: accs.clone(),
                }));
            }
        }
        // Each window still computed from panes, merged here: one partial per window and group
        // (one clone of the first pane's aggregates, the rest merged in).
        let mut starts: Vec<EventTime> = self
            .panes
            .iter()
            .flat_map(|(pane, _)| windows_of_pane(*pane, self.size, self.every))
            .filter(|start| self.range.contains(*start) && !self.sealed.contains_key(start))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        for start in starts {
            let window = Window {
                start,
                end: start.saturating_add(self.size),
            };
            let from = self.panes.partition_point(|(p, _)| *p < window.start);
            let to = self.panes.partition_point(|(p, _)| *p < window.end);
            let groups = merged(self.panes[from..to].iter().map(|(_, p)| &**p));
            out.extend(groups.into_iter().map(|(group, accs)| Partial {
                window,
                group,
                accs,
            }));
        }
    }
}

impl ViewState {
    /// The pane of an event at `t` (`None` unless the windows are panes).
    pub(super) fn pane_of(&self, t: EventTime) -> Option<EventTime> {
        let Windows::Panes(panes) = &self.windows else {
            return None;
        };
        Some(EventTime(align_down(t.millis(), panes.every.millis())))
    }

    /// Whether some window containing `pane` is still open at `watermark` and not `covered`
    /// (an event of the pane then goes to [`Self::update_in_pane`]); first seals the pane's
    /// shut windows that are still computed from panes, before an event may change one. The
    /// answer holds for the pane as long as the watermark and the coverage do.
    pub(super) fn open_pane(
        &mut self,
        pane: EventTime,
        watermark: Option<EventTime>,
        covered: &Coverage,
    ) -> bool {
        let Windows::Panes(panes) = &mut self.windows else {
            return false;
        };
        let mut open = false;
        for start in windows_of_pane(pane, panes.size, panes.every) {
            if panes.is_sealed(start) {
                continue;
            }
            let end = start.saturating_add(panes.size);
            if watermark.is_some_and(|w| end <= w) || covered.contains(start) {
                panes.seal(start, &mut self.tally);
            } else {
                open = true;
            }
        }
        open
    }

    /// Applies `row` to `key`'s aggregates in `pane`, which [`Self::open_pane`] found open.
    pub(super) fn update_in_pane(
        &mut self,
        pane: EventTime,
        key: &GroupKey,
        args: &[ArgColumn<'_>],
        row: usize,
    ) {
        let Windows::Panes(panes) = &mut self.windows else {
            return;
        };
        let every = panes.every;
        let groups = panes.panes.entry(pane).or_insert_with(|| {
            Arc::new(WindowGroups {
                end: pane.saturating_add(every),
                groups: GroupMap::default(),
            })
        });
        // Copies the pane only if a reader has it pinned.
        update_group(
            Arc::make_mut(groups),
            key,
            args,
            row,
            &self.program,
            &mut self.tally,
        );
    }
}
