//! Paging through a view answer: at most `limit` rows per response, and an opaque cursor that
//! says where the next page starts.
//!
//! ```text
//!  answer rows (result order: start, end, group) ─► skip rows at or before the cursor
//!      ─► take `limit` ─► rows left over? next_cursor = position of the last row taken
//! ```
//!
//! A cursor is a position in result order, not an offset: rows that arrive between two pages
//! (fresh speed-layer windows, a batch publication) never shift a page or repeat a row before
//! the position.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use tandem_shared::row::{GroupKey, ViewRow};
use tandem_shared::time::EventTime;

use crate::seam::AnsweredRow;

/// Rows per page without `limit`, and the largest `limit` accepted.
pub const DEFAULT_LIMIT: usize = 10_000;
pub const MAX_LIMIT: usize = 100_000;

/// A position in result order: the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub start: EventTime,
    pub end: EventTime,
    pub group: GroupKey,
}

/// A cursor that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("not a cursor returned by this API")]
pub struct BadCursor;

impl Cursor {
    fn of(row: &ViewRow) -> Self {
        Self {
            start: row.window.start,
            end: row.window.end,
            group: row.group.clone(),
        }
    }

    fn cmp_row(&self, row: &ViewRow) -> Ordering {
        self.start
            .cmp(&row.window.start)
            .then(self.end.cmp(&row.window.end))
            .then_with(|| self.group.cmp(&row.group))
    }

    /// URL-safe text: hexadecimal of the position's JSON.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        json.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(text: &str) -> Result<Self, BadCursor> {
        let bytes = text.as_bytes();
        if !bytes.len().is_multiple_of(2) || bytes.len() > 64 * 1024 {
            return Err(BadCursor);
        }
        let json = bytes
            .chunks_exact(2)
            .map(|pair| {
                let digits = std::str::from_utf8(pair).map_err(|_| BadCursor)?;
                u8::from_str_radix(digits, 16).map_err(|_| BadCursor)
            })
            .collect::<Result<Vec<u8>, _>>()?;
        serde_json::from_slice(&json).map_err(|_| BadCursor)
    }
}

/// How many of `rows` (in result order) come after `after`. Pure.
pub fn after_count(rows: &[AnsweredRow], after: Option<&Cursor>) -> usize {
    let skip = after.map_or(0, |c| {
        rows.partition_point(|r| c.cmp_row(&r.row) != Ordering::Less)
    });
    rows.len() - skip
}

/// Cuts one page from `rows` (in result order): the rows after `after`, at most `limit`, and
/// the cursor of the next page if rows are left. Pure.
pub fn cut(
    rows: Vec<AnsweredRow>,
    after: Option<&Cursor>,
    limit: usize,
) -> (Vec<AnsweredRow>, Option<Cursor>) {
    let skip = after.map_or(0, |c| {
        rows.partition_point(|r| c.cmp_row(&r.row) != Ordering::Less)
    });
    let mut page: Vec<AnsweredRow> = rows.into_iter().skip(skip).collect();
    if page.len() <= limit {
        return (page, None);
    }
    page.truncate(limit);
    let next = page.last().map(|r| Cursor::of(&r.row));
    (page, next)
}

#[cfg(test)]
mod tests {
    use tandem_shared::row::GroupValue;
    use tandem_shared::window::Window;

    use super::*;
    use tandem_shared::row::Source;

    fn row(start: i64, city: &str) -> AnsweredRow {
        AnsweredRow {
            row: ViewRow {
                window: Window {
                    start: EventTime(start),
                    end: EventTime(start + 60),
                },
                group: vec![GroupValue::Str(city.into())],
                values: vec![],
            },
            source: Source::Speed,
            complete: true,
        }
    }

    fn keys(rows: &[AnsweredRow]) -> Vec<(i64, String)> {
        rows.iter()
            .map(|r| match &r.row.group[0] {
                GroupValue::Str(s) => (r.row.window.start.0, s.clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn pages_cover_every_row_once_in_order() {
        let all: Vec<AnsweredRow> = (0..7)
            .flat_map(|w| ["Chennai", "Delhi", "Pune"].map(|c| row(w * 60, c)))
            .collect();
        let want = keys(&all);
        let mut got = Vec::new();
        let mut cursor: Option<Cursor> = None;
        let mut pages = 0;
        loop {
            let (page, next) = cut(all.clone(), cursor.as_ref(), 4);
            assert!(page.len() <= 4);
            got.extend(keys(&page));
            pages += 1;
            match next {
                Some(c) => cursor = Some(Cursor::decode(&c.encode()).unwrap()),
                None => break,
            }
        }
        assert_eq!(got, want);
        assert_eq!(pages, 6, "21 rows in pages of 4");
    }

    #[test]
    fn a_row_arriving_before_the_cursor_does_not_shift_the_next_page() {
        let rows = vec![row(0, "A"), row(0, "B"), row(60, "A"), row(60, "B")];
        let (first, next) = cut(rows.clone(), None, 2);
        assert_eq!(keys(&first), [(0, "A".into()), (0, "B".into())]);
        let mut grown = rows;
        grown.insert(0, row(0, "0")); // sorts before the cursor
        let (second, next) = cut(grown, next.as_ref(), 2);
        assert_eq!(keys(&second), [(60, "A".into()), (60, "B".into())]);
        assert!(next.is_none());
    }

    #[test]
    fn a_full_last_page_has_no_next_cursor_and_bad_cursors_are_refused() {
        let rows = vec![row(0, "A"), row(0, "B")];
        assert!(cut(rows, None, 2).1.is_none());
        for bad in ["zz", "abc", "7b7d", ""] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
